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
    # Throttled before the key is looked at: a right key from that address waits too ...
    right = new_key(project)
    assert_error(api_get(right, address), 429, "too_many_requests")
    # ... and another address is not affected.
    assert api_get(right, unique_address()).status_code == 200


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
