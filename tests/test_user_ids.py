"""One rule for user ids, everywhere: an id that a URL cannot carry is refused when it is created."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.base.errors import InvalidInput
from budgets.models import UserBudget
from tests.api_helpers import assert_error, body_of, db_state, new_key
from tests.test_hosted import Hosted, record

pytestmark = pytest.mark.django_db

UNADDRESSABLE = ["a/../b", "../etc", "a/./b", ".", "..", "a/..", "line\nbreak", "tab\tx", "bell\x07", "del\x7f",
                 "sep\u2028x"]
FINE = ["alice@example.com", "team/alice", "a..b", ".hidden", "a/...", "名前", "with space"]


@pytest.mark.parametrize("user_id", UNADDRESSABLE)
def test_the_service_refuses_ids_a_url_cannot_carry(project, user_id):
    with pytest.raises(InvalidInput):
        services.validate_user_id(user_id)


@pytest.mark.parametrize("user_id", UNADDRESSABLE)
def test_the_api_refuses_them_with_a_validation_error_and_writes_nothing(api, user_id):
    before = db_state()

    response = api.put(f"/api/v1/users/{quote(user_id, safe='/')}/budget", {"total_budget": 1})

    assert_error(response, 400, "validation_error")
    assert db_state() == before


@pytest.mark.parametrize("user_id", ["line\nbreak", "a/./b", "tab\tx"])
def test_the_api_refuses_them_in_reads_and_deletes_too(api, user_id):
    path = f"/api/v1/users/{quote(user_id, safe='/')}"
    assert_error(api.get(path), 400, "validation_error")
    assert_error(api.delete(path), 400, "validation_error")
    assert_error(api.get(f"/api/v1/costs?user={quote(user_id)}"), 400, "validation_error")


@pytest.mark.parametrize("user_id", UNADDRESSABLE)
def test_hosted_set_budget_refuses_them_and_writes_nothing(project, user_id):
    hosted = Hosted(new_key(project))
    before = db_state()

    response = hosted.set({"ok-user": record(), user_id: record()})

    assert response.status_code == 400, response.content
    assert body_of(response)["status"] == "error"
    assert db_state() == before


@pytest.mark.parametrize("user_id", ["a/../b", "line\nbreak", "a/./b"])
def test_the_console_create_form_refuses_them(project, user_id):
    staff = get_user_model().objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client = Client()
    client.force_login(staff)

    response = client.post(reverse("budget_create", args=[project.pk]),
                           {"user_id": user_id, "total_budget": "7", "duration": "monthly"})

    assert response.status_code == 400
    assert "path segments" in response.content.decode() or "control characters" in response.content.decode()
    assert not UserBudget.objects.exists()


@pytest.mark.parametrize("user_id", FINE)
def test_other_ids_round_trip_through_the_api_and_the_console(api, project, user_id):
    path = f"/api/v1/users/{quote(user_id, safe='/')}"
    assert api.put(f"{path}/budget", {"total_budget": 1}).status_code == 201
    assert body_of(api.get(path))["user"] == user_id
    staff = get_user_model().objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(reverse("user_detail", args=[project.pk, user_id])).status_code == 200
    assert api.delete(path).status_code == 204
