"""Guessing is slow: console logins lock out after repeated failures, wrong API keys are throttled per address."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets.models import AuditLog
from tests.api_helpers import assert_error, body_of, new_key
from tests.test_hosted import Hosted
from tests.test_settings import manage

pytestmark = pytest.mark.django_db

PASSWORD = "pw-mia-123456"


@pytest.fixture
def member(project):
    person = get_user_model().objects.create_user("mia", password=PASSWORD)
    project.members.add(person)
    return person


def unique_address() -> str:
    """An address of its own per test: the failure counters live in the shared cache."""
    number = uuid.uuid4().int
    return f"10.{number % 250}.{number // 250 % 250}.{number // 62500 % 250 + 1}"


def login(client: Client, password: str, address: str, username: str = "mia"):
    return client.post(reverse("login"), {"username": username, "password": password}, REMOTE_ADDR=address)


# --- console login ---------------------------------------------------------------------------------


def test_five_failed_logins_lock_the_account_out_from_that_address(member, settings):
    assert settings.AXES_FAILURE_LIMIT == 5
    client, address = Client(), unique_address()
    for _ in range(4):
        assert login(client, "wrong", address).status_code == 200  # the form again, with its error

    locked = login(client, "wrong", address)  # the fifth failure locks

    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    assert int(locked["Retry-After"]) > 0
    # Now even the right password is refused from there, and nobody is logged in.
    refused = login(client, PASSWORD, address)
    assert refused.status_code == 429
    assert 'id="lockout"' in refused.content.decode()
    assert client.get(reverse("project_list")).status_code == 302


def test_the_lockout_is_per_username_and_address(member, settings):
    address = unique_address()
    for _ in range(5):
        login(Client(), "wrong", address)

    elsewhere = Client()
    assert login(elsewhere, PASSWORD, unique_address()).status_code == 302  # another address still logs in
    assert elsewhere.get(reverse("project_list")).status_code == 200


def test_a_successful_login_before_the_limit_resets_the_count(member):
    address = unique_address()
    for _ in range(4):
        login(Client(), "wrong", address)
    assert login(Client(), PASSWORD, address).status_code == 302

    for _ in range(4):
        assert login(Client(), "wrong", address).status_code == 200


def test_force_login_is_not_affected(member):
    client = Client()
    client.force_login(member)
    assert client.get(reverse("project_list")).status_code == 200


# --- API keys --------------------------------------------------------------------------------------


@pytest.fixture
def limited(settings):
    settings.API_AUTH_FAILURE_LIMIT = 3
    return settings


def api_get(key: str, address: str, path: str = "/api/v1/users"):
    return Client().get(path, headers={"Authorization": f"Bearer {key}"}, REMOTE_ADDR=address)


def test_wrong_api_keys_from_one_address_are_throttled_with_429_and_retry_after(project, limited):
    address = unique_address()
    for _ in range(3):
        assert_error(api_get("bm_wrong_key_0123456789", address), 401, "unauthorized")

    response = api_get("bm_wrong_key_0123456789", address)

    error = assert_error(response, 429, "too_many_requests")
    assert "retry" in error["message"]
    assert 1 <= int(response["Retry-After"]) <= 60
    assert api_get("bm_wrong_key_0123456789", unique_address()).status_code == 401  # another address is not affected


def test_a_valid_key_is_served_after_wrong_ones_from_its_address(project, limited, settings):
    # Behind the load balancer every client may share an address: one guesser must not lock out the rest.
    assert settings.API_AUTH_FAILURE_LIMIT == 3
    address, right = unique_address(), new_key(project)
    for _ in range(20):
        api_get("bm_wrong_key_0123456789", address)
    assert_error(api_get("bm_wrong_key_0123456789", address), 429, "too_many_requests")

    response = api_get(right, address)

    assert response.status_code == 200, response.content
    assert_error(api_get("bm_wrong_key_0123456789", address), 429, "too_many_requests")  # guesses still wait


def test_a_valid_key_is_served_on_the_hosted_protocol_after_wrong_ones(project, limited):
    address, right = unique_address(), new_key(project)
    hosted = Hosted(right)
    for _ in range(20):
        hosted.client.post("/get_budget", data={"project_name": "acme"}, content_type="application/json",
                           headers={"Authorization": "Bearer bm_wrong"}, REMOTE_ADDR=address)

    response = hosted.client.post("/set_budget", data={"project_name": "acme", "user_dict": {}},
                                  content_type="application/json", headers={"Authorization": f"Bearer {right}"},
                                  REMOTE_ADDR=address)

    assert response.status_code == 200, response.content
    assert body_of(response)["status"] == "success"


def test_the_trusted_proxy_header_names_the_address_that_is_counted(project, limited, settings):
    settings.TRUSTED_PROXY_HEADER, settings.TRUSTED_PROXY_COUNT = "X-Forwarded-For", 1
    balancer, guesser, neighbour = unique_address(), unique_address(), unique_address()

    def via_balancer(client_address: str):
        return Client().get("/api/v1/users", headers={"Authorization": "Bearer bm_wrong_key_0123456789",
                                                       "X-Forwarded-For": f"203.0.113.9, {client_address}"},
                            REMOTE_ADDR=balancer)

    for _ in range(3):
        assert via_balancer(guesser).status_code == 401
    # The first hop (203.0.113.9) was written by the client itself: only the balancer's entry counts.
    assert_error(via_balancer(guesser), 429, "too_many_requests")
    assert_error(via_balancer(neighbour), 401, "unauthorized")  # another client behind the same balancer


def test_two_trusted_proxies_count_the_address_the_outer_one_saw(project, limited, settings):
    settings.TRUSTED_PROXY_HEADER, settings.TRUSTED_PROXY_COUNT = "X-Forwarded-For", 2
    guesser = unique_address()

    def via_two(spoofed: str):
        return Client().get("/api/v1/users", headers={"Authorization": "Bearer bm_wrong_key_0123456789",
                                                       "X-Forwarded-For": f"{spoofed}, {guesser}, 10.0.0.2"},
                            REMOTE_ADDR="10.0.0.3")

    for number in range(3):
        assert via_two(f"198.51.100.{number}").status_code == 401

    assert_error(via_two("198.51.100.99"), 429, "too_many_requests")  # a new spoofed first hop does not help
    neighbour = Client().get("/api/v1/users", headers={"Authorization": "Bearer bm_wrong_key_0123456789",
                                                        "X-Forwarded-For": f"{unique_address()}, 10.0.0.2"},
                             REMOTE_ADDR="10.0.0.3")
    assert_error(neighbour, 401, "unauthorized")


@pytest.mark.parametrize(("env", "message"), [
    ({"TRUSTED_PROXY_HEADER": "X-Forwarded-For", "TRUSTED_PROXY_COUNT": "0"}, "TRUSTED_PROXY_COUNT must be"),
    ({"TRUSTED_PROXY_HEADER": "X-Forwarded-For", "TRUSTED_PROXY_COUNT": "one"}, "TRUSTED_PROXY_COUNT must be"),
    ({"TRUSTED_PROXY_HEADER": "X Forwarded: For"}, "TRUSTED_PROXY_HEADER must be"),
])
def test_a_bad_trusted_proxy_setting_is_a_configuration_error(tmp_path, env, message):
    result = manage("check", env=env, tmp_path=tmp_path)

    assert result.returncode != 0
    assert message in result.stderr


def test_the_forwarded_header_is_ignored_unless_configured(project, limited, settings):
    settings.TRUSTED_PROXY_HEADER = ""
    address = unique_address()

    def spoofing(forwarded: str):
        return Client().get("/api/v1/users", headers={"Authorization": "Bearer bm_wrong_key_0123456789",
                                                       "X-Forwarded-For": forwarded}, REMOTE_ADDR=address)

    for number in range(3):
        assert spoofing(f"198.51.100.{number}").status_code == 401

    assert_error(spoofing("198.51.100.99"), 429, "too_many_requests")  # counted by REMOTE_ADDR


def test_only_failures_count(project, limited):
    address, right = unique_address(), new_key(project)
    for _ in range(10):
        assert api_get(right, address).status_code == 200


def test_the_hosted_protocol_is_throttled_in_its_own_shape(project, limited):
    address = unique_address()
    hosted = Hosted("bm_wrong_key_0123456789")
    for _ in range(3):
        assert hosted.client.post("/get_budget", data={"project_name": "acme"}, content_type="application/json",
                                  headers={"Authorization": "Bearer bm_wrong"}, REMOTE_ADDR=address).status_code == 401

    response = hosted.client.post("/set_budget", data={"project_name": "acme", "user_dict": {}},
                                  content_type="application/json", headers={"Authorization": "Bearer bm_x"},
                                  REMOTE_ADDR=address)

    assert response.status_code == 429
    assert body_of(response)["status"] == "error"
    assert int(response["Retry-After"]) > 0
    assert not AuditLog.objects.exclude(action__in=["project_create", "api_key_create"]).exists()
