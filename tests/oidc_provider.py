"""A real OpenID Connect provider for the single sign-on tests: Authlib's server classes in a Flask app.

    python -m tests.oidc_provider CONFIG_JSON [PORT]

CONFIG_JSON: {"client_id", "client_secret", "redirect_uri", "people": {"<login>": {claims}}}; each
person's claims (email, email_verified, name, groups, ...) go into the ID token and the userinfo
answer. The authorization page is a form where the browser types the login name (no password: the
provider's own login is not what is tested). Discovery, JWKS (RS256, a key made at start), the
authorization code grant with PKCE and nonce, the token endpoint (client_secret_post or _basic) and
userinfo are Authlib's. PUT /test/people/<login> with JSON claims changes a person (tests only).
It prints "ready" once it listens. The codes and tokens live in memory.
"""

from __future__ import annotations

import html
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import AuthorizationCodeMixin, ClientMixin, TokenMixin
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.core.grants import OpenIDCode
from flask import Flask, jsonify, request
from joserfc.jwk import KeySet, RSAKey

KEY = RSAKey.generate_key(2048, parameters={"kid": "test-key", "use": "sig", "alg": "RS256"})


@dataclass
class Person:
    login: str
    claims: dict[str, Any]


@dataclass
class Client(ClientMixin):
    client_id: str
    client_secret: str
    redirect_uri: str
    client_metadata: dict[str, Any] = field(default_factory=dict)

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_allowed_scope(self, scope: str) -> str:
        return " ".join(item for item in scope.split() if item in ("openid", "profile", "email", "groups"))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri == self.redirect_uri

    def check_client_secret(self, client_secret: str) -> bool:
        return secrets.compare_digest(client_secret, self.client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_post", "client_secret_basic")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "authorization_code"


@dataclass
class Code(AuthorizationCodeMixin):
    code: str
    client_id: str
    redirect_uri: str
    scope: str
    person: Person
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    auth_time: int = field(default_factory=lambda: int(time.time()))

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> str:
        return "0"

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass
class Token(TokenMixin):
    client: Client
    person: Person
    scope: str
    issued_at: float = field(default_factory=time.time)

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return 3600

    def is_expired(self) -> bool:
        return time.time() > self.issued_at + 3600

    def is_revoked(self) -> bool:
        return False

    def get_user(self) -> Person:
        return self.person

    def get_client(self) -> Client:
        return self.client


def user_info(person: Person, scope: str) -> UserInfo:
    return UserInfo(sub=person.login, **person.claims)


def make_app(config: dict[str, Any], issuer: str) -> Flask:
    client = Client(config["client_id"], config["client_secret"], config["redirect_uri"])
    people = {login: Person(login, claims) for login, claims in config["people"].items()}
    codes: dict[str, Code] = {}
    tokens: dict[str, Token] = {}

    class CodeGrant(AuthorizationCodeGrant):
        TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

        def save_authorization_code(self, code: str, request: Any) -> None:
            payload = request.payload
            codes[code] = Code(code, client.client_id, payload.redirect_uri, payload.scope, request.user,
                               payload.data.get("nonce"), payload.data.get("code_challenge"),
                               payload.data.get("code_challenge_method"))

        def query_authorization_code(self, code: str, client: Client) -> Code | None:
            found = codes.get(code)
            return found if found is not None and found.client_id == client.client_id else None

        def delete_authorization_code(self, authorization_code: Code) -> None:
            codes.pop(authorization_code.code, None)

        def authenticate_user(self, authorization_code: Code) -> Person:
            return authorization_code.person

    class OpenID(OpenIDCode):
        def exists_nonce(self, nonce: str, request: Any) -> bool:
            return any(code.nonce == nonce for code in codes.values())

        def resolve_client_private_key(self, client: Client) -> KeySet:
            return KeySet([KEY])

        def get_client_claims(self, client: Client) -> dict[str, Any]:
            return {"iss": issuer, "aud": [client.client_id]}

        def generate_user_info(self, user: Person, scope: str) -> UserInfo:
            return user_info(user, scope)

    class UserInfoAnswer(UserInfoEndpoint):
        def get_issuer(self) -> str:
            return issuer

        def generate_user_info(self, user: Person, scope: str) -> UserInfo:
            return user_info(user, scope)

        def resolve_private_key(self) -> KeySet:
            return KeySet([KEY])

    class Bearer(BearerTokenValidator):
        def authenticate_token(self, token_string: str) -> Token | None:
            return tokens.get(token_string)

    def save_token(token: dict[str, Any], request: Any) -> None:
        tokens[token["access_token"]] = Token(request.client, request.user, token.get("scope", ""))

    app = Flask(__name__)
    server = AuthorizationServer(app, query_client=lambda client_id: client if client_id == client.client_id
                                 else None, save_token=save_token)
    server.register_grant(CodeGrant, [OpenID(require_nonce=False), CodeChallenge(required=False)])
    protector = ResourceProtector()
    protector.register_token_validator(Bearer())
    server.register_endpoint(UserInfoAnswer(resource_protector=protector))

    @app.get("/.well-known/openid-configuration")
    def discovery() -> Any:
        return jsonify({
            "issuer": issuer,
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "userinfo_endpoint": f"{issuer}/userinfo",
            "jwks_uri": f"{issuer}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid", "profile", "email", "groups"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
            "claims_supported": ["sub", "email", "email_verified", "name", "preferred_username", "groups"],
        })

    @app.put("/test/people/<login>")
    def set_person(login: str) -> Any:
        """Test control: a person's claims from now on (their groups changed at the provider)."""
        people[login] = Person(login, request.get_json())
        return jsonify({"login": login})

    @app.get("/jwks")
    def jwks() -> Any:
        return jsonify(KeySet([KEY]).as_dict(private=False))

    @app.route("/authorize", methods=["GET", "POST"])
    def authorize() -> Any:
        if request.method == "GET":
            server.get_consent_grant(end_user=None)  # validates the request (client, redirect URI, scope)
            return (f'<!doctype html><title>Test identity provider</title><h1>Test identity provider</h1>'
                    f'<form method="post" action="/authorize?{html.escape(request.query_string.decode())}">'
                    f'<label>Login <input id="login" name="login"></label>'
                    f'<button type="submit" id="sign-in">Sign in</button></form>')
        person = people.get(request.form.get("login", ""))
        return server.create_authorization_response(grant_user=person)

    @app.post("/token")
    def token() -> Any:
        return server.create_token_response()

    @app.route("/userinfo", methods=["GET", "POST"])
    def userinfo() -> Any:
        return server.create_endpoint_response("userinfo")

    return app


def main() -> None:
    """Listen on a free port of 127.0.0.1 (or the one given), then say `ready <port>`."""
    from werkzeug.serving import make_server

    config = json.loads(sys.argv[1])
    httpd = make_server("127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0, Flask(__name__), threaded=True)
    httpd.app = make_app(config, f"http://127.0.0.1:{httpd.server_port}")
    print(f"ready {httpd.server_port}", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
