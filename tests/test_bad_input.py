"""Input that used to be silently changed is refused: a clear 400 naming the field, nothing written.

Each case runs on every endpoint that takes the value: the native API under /api/v1/, the
hosted protocol (/set_budget, /get_budget) and the console's forms.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from django.core import signals
from django.db import close_old_connections
from django.urls import reverse

from budgets.models import Reservation, UserBudget
from tests.api_helpers import ApiClient, body_of, db_state, new_key

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(project, make_budget):
    make_budget("alice", "10")
    return ApiClient(new_key(project))


@pytest.fixture
def open_reservation(api) -> int:
    response = api.post("/api/v1/users/alice/reservations", {"estimated_cost": 1})
    assert response.status_code == 201, response.content
    return body_of(response)["id"]


def written() -> dict[str, Any]:
    return {**db_state(), "reservations": list(Reservation.objects.order_by("pk").values_list("pk", "status"))}


def assert_refused(response: Any, field: str, *, hosted: bool = False) -> None:
    """400, the field named in the message (either error shape)."""
    assert response.status_code == 400, response.content
    body = body_of(response)
    message = body["message"] if hosted else body["error"]["message"]
    if hosted:
        assert body["status"] == "error"
    assert field in message, message


def send(api: ApiClient, method: str, path: str, raw: str) -> Any:
    return api.call(method, path, raw=raw)


def hosted_set(user_dict_text: str) -> str:
    return '{"project_name": "acme", "user_dict": %s}' % user_dict_text  # noqa: UP031


# --- money below the precision money is kept to (12 places) -------------------------------------

# (method, path, body with X where the amount goes, the field the message names)
AMOUNTS = [
    ("put", "/api/v1/users/alice/budget", '{"total_budget": X}', "total_budget"),
    ("post", "/api/v1/users/alice/costs", '{"model": "gpt-4o", "cost": X}', "cost"),
    ("post", "/api/v1/users/alice/check", '{"estimated_cost": X}', "estimated_cost"),
    ("post", "/api/v1/users/alice/reservations", '{"estimated_cost": X}', "estimated_cost"),
    ("post", "/api/v1/cost-quote",
     '{"model": "x", "prompt_tokens": 1, "completion_tokens": 1, "input_cost_per_token": X, '
     '"output_cost_per_token": 0.001}', "input_cost_per_token"),
    ("post", "/set_budget", hosted_set('{"alice": {"total_budget": X}}'), "total_budget"),
    ("post", "/set_budget", hosted_set('{"alice": {"total_budget": 10, "current_cost": X}}'), "current_cost"),
    ("post", "/set_budget", hosted_set('{"alice": {"total_budget": 10, "model_cost": {"gpt-4o": X}}}'), "model_cost"),
]


@pytest.mark.parametrize(("method", "path", "template", "field"), AMOUNTS)
@pytest.mark.parametrize("amount", ["1e-30", "0.0000000000004", "5E-13"])
def test_an_amount_that_would_round_to_zero_is_refused_everywhere(api, method, path, template, field, amount):
    before = written()

    response = send(api, method, path, template.replace("X", amount))

    assert_refused(response, field, hosted=path == "/set_budget")
    assert written() == before


def test_settling_with_a_cost_that_would_round_to_zero_is_refused(api, open_reservation):
    before = written()

    response = send(api, "post", f"/api/v1/reservations/{open_reservation}/settle", '{"model": "x", "cost": 1e-30}')

    assert_refused(response, "cost")
    assert written() == before


@pytest.mark.parametrize("amount", ["1.0000000000001", "0.0000000000015", "12.3456789012345"])
def test_a_budget_with_more_than_12_decimal_places_is_refused(api, amount):
    before = written()

    response = send(api, "put", "/api/v1/users/alice/budget", '{"total_budget": %s}' % amount)  # noqa: UP031

    assert_refused(response, "total_budget")
    assert "12 decimal places" in body_of(response)["error"]["message"]
    assert written() == before


def test_a_budget_with_trailing_zeros_past_12_places_is_the_same_amount_and_accepted(api):
    response = send(api, "put", "/api/v1/users/alice/budget", '{"total_budget": 1.50000000000000000}')

    assert response.status_code == 200, response.content
    assert UserBudget.objects.get(user_id="alice").total_budget == 1.5


def test_a_cost_computed_in_floating_point_is_rounded_to_12_places_not_refused(api):
    """LiteLLM's response_cost is a float: 0.00045 arrives as 0.00045000000000000004."""
    response = send(api, "post", "/api/v1/users/alice/costs", '{"model": "x", "cost": 0.00045000000000000004}')

    assert response.status_code == 201, response.content
    assert str(body_of(response)["event"]["cost"]) == "0.00045"


@pytest.mark.parametrize(("form", "amount"), [("create", "1e-30"), ("create", "1.0000000000001"),
                                               ("edit", "1e-30"), ("edit", "0.0000000000001")])
def test_the_console_refuses_a_budget_past_12_decimal_places(admin_client, project, make_budget, form, amount):
    make_budget("alice", "10")
    before = written()
    if form == "create":
        url = reverse("budget_create", args=[project.pk])
        data = {"user_id": "bob", "total_budget": amount, "duration": "monthly"}
    else:
        url = reverse("budget_edit", args=[project.pk, "alice"])
        data = {"total_budget": amount, "duration": "monthly"}

    response = admin_client.post(url, data)

    assert response.status_code == 400
    assert "total_budget" in response.context["form"].errors
    assert written() == before


# --- duplicate JSON keys ------------------------------------------------------------------------

DUPLICATES = [
    ("put", "/api/v1/users/alice/budget", '{"total_budget": 1, "total_budget": 1000}', "total_budget"),
    ("post", "/api/v1/users/alice/costs", '{"model": "x", "cost": 1, "cost": 1000}', "cost"),
    ("post", "/api/v1/users/alice/costs",
     '{"completion": {"model": "gpt-4o", "usage": {"prompt_tokens": 1, "prompt_tokens": 9}}}', "prompt_tokens"),
    ("post", "/api/v1/users/alice/check", '{"estimated_cost": 1, "estimated_cost": 1000}', "estimated_cost"),
    ("post", "/api/v1/users/alice/projected-cost",
     '{"model": "gpt-4o", "messages": [{"role": "user", "content": "a", "content": "b"}]}', "content"),
    ("post", "/api/v1/cost-quote", '{"model": "gpt-4o", "model": "x", "prompt_tokens": 1}', "model"),
    ("post", "/api/v1/users/alice/reservations", '{"estimated_cost": 1, "estimated_cost": 5}', "estimated_cost"),
    ("post", "/set_budget", hosted_set('{"alice": {"total_budget": 1, "total_budget": 1000}}'), "total_budget"),
    ("post", "/set_budget", '{"project_name": "acme", "user_dict": {"bob": {"total_budget": 1}}, "user_dict": {}}',
     "user_dict"),
    ("post", "/get_budget", '{"project_name": "other", "project_name": "acme"}', "project_name"),
]


@pytest.mark.parametrize(("method", "path", "raw", "field"), DUPLICATES)
def test_a_key_given_twice_is_refused_at_any_depth(api, method, path, raw, field):
    before = written()

    response = send(api, method, path, raw)

    assert_refused(response, field, hosted=path in ("/set_budget", "/get_budget"))
    assert "twice" in response.content.decode()
    assert written() == before


def test_settling_with_a_key_given_twice_is_refused(api, open_reservation):
    before = written()

    response = send(api, "post", f"/api/v1/reservations/{open_reservation}/settle",
                    '{"model": "x", "cost": 1, "cost": 2}')

    assert_refused(response, "cost")
    assert written() == before


# --- control characters in model names ----------------------------------------------------------

MODEL_BODIES = [
    ("/api/v1/users/alice/costs", lambda m: {"model": m, "cost": 1}),
    ("/api/v1/users/alice/costs", lambda m: {"model": m, "prompt_tokens": 1, "completion_tokens": 1,
                                             "input_cost_per_token": 0.001, "output_cost_per_token": 0.001}),
    ("/api/v1/users/alice/costs", lambda m: {"completion": {"model": m, "usage": {"prompt_tokens": 1}}, "cost": 1}),
    ("/api/v1/users/alice/check", lambda m: {"model": m, "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/v1/users/alice/projected-cost", lambda m: {"model": m, "messages": [{"role": "user", "content": "hi"}]}),
    ("/api/v1/cost-quote", lambda m: {"model": m, "prompt_tokens": 1, "completion_tokens": 1}),
    ("/api/v1/users/alice/reservations", lambda m: {"model": m, "estimated_cost": 1}),
    ("/set_budget", lambda m: {"project_name": "acme",
                               "user_dict": {"alice": {"total_budget": 10, "model_cost": {m: 0.5}}}}),
]
BAD_MODELS = ["gpt-4o\n", "gpt\t4o", "gpt-4o\r", "gpt\u202e4o", "gpt-4o\u200b", "\x85gpt"]


@pytest.mark.parametrize(("path", "body"), MODEL_BODIES)
@pytest.mark.parametrize("model", BAD_MODELS)
def test_a_model_name_with_a_control_or_format_character_is_refused(api, path, body, model):
    before = written()

    response = api.post(path, body(model))

    assert_refused(response, "model", hosted=path == "/set_budget")
    assert written() == before


@pytest.mark.parametrize("model", BAD_MODELS)
def test_settling_with_a_model_name_with_a_control_character_is_refused(api, open_reservation, model):
    before = written()

    response = api.post(f"/api/v1/reservations/{open_reservation}/settle", {"model": model, "cost": 1})

    assert_refused(response, "model")
    assert written() == before


# --- format characters (bidirectional controls) in user ids -------------------------------------

BAD_USERS = ["\u202eevil", "ad\u202dmin", "a\u2066b\u2069", "\u200ealice", "alice\u200f", "al\u200bice",
             "\ufeffalice", "a\u00adb"]


def _path_of(user: str) -> str:
    from urllib.parse import quote

    return quote(user, safe="")


@pytest.mark.parametrize(("method", "path", "body"), [
    ("put", "/api/v1/users/{}/budget", {"total_budget": 1}),
    ("post", "/api/v1/users/{}/costs", {"model": "x", "cost": 1}),
    ("post", "/api/v1/users/{}/reservations", {"estimated_cost": 1}),
])
@pytest.mark.parametrize("user", BAD_USERS)
def test_a_user_id_with_a_format_character_is_refused_in_the_path(api, method, path, body, user):
    before = written()

    response = api.call(method, path.format(_path_of(user)), body)

    assert_refused(response, "user")
    assert written() == before


@pytest.mark.parametrize("user", BAD_USERS)
def test_a_user_id_with_a_format_character_is_refused_by_the_hosted_protocol(api, user):
    before = written()

    response = api.post("/set_budget", {"project_name": "acme", "user_dict": {user: {"total_budget": 1}}})

    assert_refused(response, "user", hosted=True)
    assert written() == before


@pytest.mark.parametrize("user", BAD_USERS)
def test_a_user_id_with_a_format_character_is_refused_by_the_console(admin_client, project, user):
    before = written()

    response = admin_client.post(reverse("budget_create", args=[project.pk]),
                                 {"user_id": user, "total_budget": "1", "duration": "monthly"})

    assert response.status_code == 400
    assert "user_id" in response.context["form"].errors
    assert written() == before


@pytest.mark.parametrize("name", ["\u202eemca", "team\u2066x", "a\u200bb"])
def test_a_project_name_with_a_format_character_is_refused_by_the_console(admin_client, project, name):
    before = written()

    response = admin_client.post(reverse("project_settings_save", args=[project.pk]),
                                 {"name": name, "timezone": "UTC", "duration": "none"})

    project.refresh_from_db()
    assert project.name == "acme"
    assert response.status_code in (200, 400)
    assert "project name" in response.content.decode()
    assert written() == before


def test_a_user_id_spelled_with_an_escaped_percent_sign_is_still_a_user(api):
    response = api.put("/api/v1/users/50%25FF/budget", {"total_budget": 1})

    assert response.status_code == 201, response.content
    assert UserBudget.objects.filter(user_id="50%FF").exists()


# --- a released reservation cannot be settled, whatever the body -------------------------------

@pytest.mark.parametrize("raw", ['{"model": "x", "cost": 1}', '{"cost": -1}', '{"nope": 1}', "{", "[]", ""])
def test_settling_a_released_reservation_is_409_whatever_the_body(api, open_reservation, raw):
    assert api.post(f"/api/v1/reservations/{open_reservation}/release").status_code == 200
    before = written()

    response = send(api, "post", f"/api/v1/reservations/{open_reservation}/settle", raw)

    assert response.status_code == 409, response.content
    assert body_of(response)["error"]["type"] == "conflict"
    assert written() == before


# --- a chunked body (no Content-Length) ---------------------------------------------------------

@pytest.fixture
def wsgi(project):
    """Call the site's WSGI application as gunicorn does (the test client always sends Content-Length
    and re-escapes a path that is not UTF-8)."""
    from budgetsite.wsgi import application

    key = new_key(project)
    # Django would close the test transaction's connection at each request (the test client
    # disconnects these receivers itself for the same reason).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)

    def call(method: str, path: str, body: bytes, *, chunked: bool = True, terminated: bool = True,
             ) -> tuple[int, Any]:
        environ = {
            "REQUEST_METHOD": method, "PATH_INFO": path, "SERVER_NAME": "testserver", "SERVER_PORT": "80",
            "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.input_terminated": terminated,
            "wsgi.errors": io.StringIO(), "CONTENT_TYPE": "application/json",
            "HTTP_AUTHORIZATION": f"Bearer {key}", "REMOTE_ADDR": "127.0.0.1", "SERVER_PROTOCOL": "HTTP/1.1",
        }
        environ.update({"HTTP_TRANSFER_ENCODING": "chunked"} if chunked else {"CONTENT_LENGTH": str(len(body))})
        status: list[str] = []
        chunks = application(environ, lambda line, headers, exc_info=None: status.append(line))
        content = b"".join(chunks)
        return int(status[0].split()[0]), json.loads(content)

    yield call
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def test_a_chunked_budget_is_read_not_taken_for_an_empty_body(wsgi):
    status, body = wsgi("PUT", "/api/v1/users/carol/budget", b'{"total_budget": 7}')

    assert status == 201, body
    assert UserBudget.objects.get(user_id="carol").total_budget == 7


def test_a_chunked_hosted_save_is_read(wsgi):
    status, body = wsgi("POST", "/set_budget", b'{"project_name": "acme", "user_dict": {"dan": {"total_budget": 3}}}')

    assert status == 200, body
    assert UserBudget.objects.get(user_id="dan").total_budget == 3


def test_a_chunked_body_over_the_limit_is_413_and_writes_nothing(wsgi, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1000
    before = written()

    status, body = wsgi("PUT", "/api/v1/users/carol/budget", b'{"total_budget": 7, "x": "' + b"a" * 2000 + b'"}')

    assert status == 413, body
    assert written() == before


def test_a_chunked_body_the_server_did_not_end_is_411(wsgi):
    status, body = wsgi("PUT", "/api/v1/users/carol/budget", b'{"total_budget": 7}', terminated=False)

    assert status == 411, body
    assert not UserBudget.objects.filter(user_id="carol").exists()


# --- broken percent-encoding in the path --------------------------------------------------------

# As a WSGI server passes a path: percent-decoded bytes as latin-1 text (Django's test client
# would turn %FF back into "%FF" before the site sees it).
@pytest.mark.parametrize(("method", "path", "body"), [
    ("PUT", "/api/v1/users/\xff/budget", b'{"total_budget": 1}'),
    ("PUT", "/api/v1/users/a\xc3/budget", b'{"total_budget": 1}'),
    ("POST", "/api/v1/users/\xc0\xaf/costs", b'{"model": "x", "cost": 1}'),
    ("POST", "/api/v1/users/\xed\xa0\x80/reservations", b'{"estimated_cost": 1}'),
    ("GET", "/api/v1/users/\xff", b""),
    ("GET", "/api/v1/users/\xfe/costs", b""),
])
def test_a_path_with_an_escape_that_is_not_utf8_is_refused(wsgi, method, path, body):
    before = written()

    status, answer = wsgi(method, path, body, chunked=False)

    assert status == 400, answer
    assert "URL path" in answer["error"]["message"]
    assert written() == before


def test_a_path_in_utf8_still_reaches_its_user(wsgi):
    status, answer = wsgi("PUT", "/api/v1/users/j\xc3\xb6rg/budget", b'{"total_budget": 1}', chunked=False)

    assert status == 201, answer
    assert UserBudget.objects.filter(user_id="jörg").exists()


# --- alert thresholds: one rule (validation.validate_alert_thresholds) for the form and the service

@pytest.mark.parametrize("typed", ["0", "1001", "80, 2000", "²", "٨٠", "eighty", "-5"])
def test_the_console_refuses_a_threshold_that_is_not_a_whole_percentage(admin_client, project, typed):
    before = project.alert_thresholds

    response = admin_client.post(reverse("alert_settings_save", args=[project.pk]), {"alert_thresholds": typed})

    assert response.status_code == 400
    assert "alert_thresholds" in response.context["alert_form"].errors
    project.refresh_from_db()
    assert project.alert_thresholds == before


@pytest.mark.parametrize("thresholds", [[0], [1001], [True], ["80"], [80.0], "80"])
def test_the_service_refuses_the_same_thresholds(project, thresholds):
    from budgets import services
    from budgets.base.errors import InvalidInput

    with pytest.raises(InvalidInput, match="alert_thresholds"):
        services.project_update(project=project, actor="test", alert_thresholds=thresholds)


# --- a time with an offset PostgreSQL does not take (found by schemathesis on PostgreSQL) --------

def test_a_time_with_an_offset_past_15_59_is_read_in_utc(api):
    response = api.get("/api/v1/costs?since=1057-01-22T19%3A32%3A07%2B17%3A44&until=2226-07-16T14%3A58%3A46-06%3A29")

    assert response.status_code == 200, response.content
