"""Managing limits through the API: create, list, read, change, delete; duplicates, bad input, the audit log."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.utils.timezone import now as utcnow

from budgets import services
from budgets.models import AuditLog, Limit
from budgets.services.limit_windows import limits_current, window_of
from tests.api_helpers import assert_error, body_of

pytestmark = pytest.mark.django_db


def limit_rows():
    return list(Limit.objects.order_by("pk").values_list("pk", "scope", "subject", "model", "unit", "window",
                                                         "amount", "mode"))


def audit_rows():
    return list(AuditLog.objects.order_by("pk").values_list("action", "actor"))


def test_a_new_limit_is_201_with_its_figures_in_its_current_window(api, project):
    response = api.post("/api/v1/limits", {"scope": "project", "unit": "requests", "window": "day", "limit": 100})

    assert response.status_code == 201, response.content
    body = body_of(response)
    limit = Limit.objects.get()
    assert body["id"] == limit.pk
    assert (body["scope"], body["subject"], body["model"], body["unit"], body["window"], body["mode"]) == (
        "project", None, None, "requests", "day", "hard")
    assert (body["limit"], body["used"], body["held"], body["remaining"]) == (100, 0, 0, 100)
    assert limit.resets_at == window_of("day", project, utcnow())[1]
    assert datetime.fromisoformat(body["resets_at"]) == limit.resets_at


def test_each_change_is_audited_with_the_key_that_made_it(api, project):
    key_prefix = project.api_keys.get().prefix
    created = body_of(api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "limit": 5}))

    api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 7, "mode": "soft"})
    api.delete(f"/api/v1/limits/{created['id']}")

    entries = list(AuditLog.objects.filter(action__startswith="limit_").order_by("pk"))
    assert [(e.action, e.actor, e.user_id) for e in entries] == [
        ("limit_create", f"key:{key_prefix}", "alice"), ("limit_update", f"key:{key_prefix}", "alice"),
        ("limit_delete", f"key:{key_prefix}", "alice")]
    assert (Decimal(entries[1].before["amount"]), Decimal(entries[1].after["amount"]), entries[1].after["mode"]) == (
        5, 7, "soft")


def test_a_model_limit_is_kept_under_the_price_tables_name(api):
    response = api.post("/api/v1/limits", {"scope": "user", "subject": "alice", "model": "openai/gpt-4o",
                                           "window": "day", "limit": 2})

    assert response.status_code == 201, response.content
    assert body_of(response)["model"] == "gpt-4o"
    assert Limit.objects.get().model == "gpt-4o"


def test_the_same_limit_again_is_409_naming_the_existing_id(api):
    first = body_of(api.post("/api/v1/limits", {"scope": "tag", "subject": "summarizer", "limit": 1}))
    before = limit_rows(), audit_rows()

    response = api.post("/api/v1/limits", {"scope": "tag", "subject": "summarizer", "limit": 3})

    error = assert_error(response, 409, "conflict")
    assert f"limit {first['id']}" in error["message"]
    assert (limit_rows(), audit_rows()) == before


def test_the_same_subject_may_have_a_day_and_a_month_window_and_a_request_quota(api):
    for body in ({"window": "day", "limit": 0.5}, {"window": "month", "limit": 1},
                 {"window": "day", "unit": "requests", "limit": 7}):
        response = api.post("/api/v1/limits", {"scope": "user", "subject": "alice", **body})
        assert response.status_code == 201, response.content

    assert Limit.objects.filter(subject="alice").count() == 3


@pytest.mark.parametrize(("body", "status"), [
    ({"scope": "project", "subject": "x", "limit": 1}, 400),
    ({"scope": "team", "subject": "nobody", "limit": 1}, 422),
    ({"scope": "key", "subject": "no such key", "limit": 1}, 422),
    ({"scope": "user", "limit": 1}, 400),
    ({"scope": "user", "subject": "a/../b", "limit": 1}, 422),
    ({"scope": "tag", "subject": "has space", "limit": 1}, 422),
    ({"scope": "tag", "subject": "x" * 65, "limit": 1}, 422),
    ({"scope": "project", "model": "no-such-model", "limit": 1}, 422),
    ({"scope": "project", "unit": "tokens", "limit": 1.5}, 422),
    ({"scope": "project", "unit": "euros", "limit": 1}, 400),
    ({"scope": "project", "window": "fortnight", "limit": 1}, 400),
    ({"scope": "project", "mode": "strict", "limit": 1}, 400),
    ({"scope": "project", "limit": -1}, 400),
    ({"scope": "project", "limit": "1"}, 400),
    ({"scope": "project"}, 400),
    ({"scope": "project", "limit": 1, "colour": "red"}, 400),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(api, body, status):
    before = limit_rows(), audit_rows()

    response = api.post("/api/v1/limits", body)

    assert response.status_code == status, response.content
    assert body_of(response)["error"]["message"]
    assert (limit_rows(), audit_rows()) == before


def test_a_key_limit_names_an_existing_key_and_a_team_limit_an_existing_team(api, project):
    services.api_key_create(project=project, name="batch-jobs")
    services.team_set(project=project, name="research", members=["alice"], actor="test")

    assert api.post("/api/v1/limits", {"scope": "key", "subject": "batch-jobs", "limit": 1}).status_code == 201
    assert api.post("/api/v1/limits", {"scope": "team", "subject": "research", "limit": 1}).status_code == 201


def test_the_list_filters_by_scope_and_subject_and_pages(api):
    for subject in ("alice", "bob"):
        api.post("/api/v1/limits", {"scope": "user", "subject": subject, "limit": 1})
    api.post("/api/v1/limits", {"scope": "project", "limit": 10})

    everything = body_of(api.get("/api/v1/limits"))
    users = body_of(api.get("/api/v1/limits?scope=user"))
    bob = body_of(api.get("/api/v1/limits?scope=user&subject=bob"))
    second = body_of(api.get("/api/v1/limits?limit=1&offset=1"))

    assert everything["total"] == 3 and [i["scope"] for i in everything["items"]] == ["project", "user", "user"]
    assert [i["subject"] for i in users["items"]] == ["alice", "bob"]
    assert [i["subject"] for i in bob["items"]] == ["bob"]
    assert (second["total"], second["limit"], second["offset"]) == (3, 1, 1)
    assert [i["subject"] for i in second["items"]] == ["alice"]


def test_another_projects_limit_is_404(api, make_api):
    other_project = services.project_create(name="other")
    other = make_api(in_project=other_project)
    created = body_of(other.post("/api/v1/limits", {"scope": "project", "limit": 1}))

    assert_error(api.get(f"/api/v1/limits/{created['id']}"), 404, "not_found")
    assert_error(api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 2}), 404, "not_found")
    assert_error(api.delete(f"/api/v1/limits/{created['id']}"), 404, "not_found")
    assert Limit.objects.get().amount == 1


def test_patch_changes_amount_and_mode_only(api):
    created = body_of(api.post("/api/v1/limits", {"scope": "project", "unit": "tokens", "limit": 1000}))

    response = api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 2000})
    refused = api.call("patch", f"/api/v1/limits/{created['id']}", {"window": "day"})
    fractional = api.call("patch", f"/api/v1/limits/{created['id']}", {"limit": 10.5})
    empty = api.call("patch", f"/api/v1/limits/{created['id']}", {})

    assert response.status_code == 200, response.content
    assert body_of(response)["limit"] == 2000
    assert_error(refused, 400, "validation_error")
    assert_error(fractional, 422, "validation_error")
    assert_error(empty, 400, "validation_error")
    assert Limit.objects.get().amount == 2000 and Limit.objects.get().window == "month"


def test_delete_is_204_and_the_limit_is_gone(api):
    created = body_of(api.post("/api/v1/limits", {"scope": "project", "limit": 1}))

    response = api.delete(f"/api/v1/limits/{created['id']}")

    assert response.status_code == 204
    assert not Limit.objects.exists()
    assert_error(api.get(f"/api/v1/limits/{created['id']}"), 404, "not_found")


def test_a_read_brings_a_limit_whose_window_ended_into_the_new_one(api, project):
    created = body_of(api.post("/api/v1/limits", {"scope": "project", "window": "hour", "limit": 1}))
    past = datetime(2020, 1, 1, 10, 30, tzinfo=UTC)
    Limit.objects.filter(pk=created["id"]).update(
        used=Decimal("0.7"), window_start=datetime(2020, 1, 1, 10, tzinfo=UTC),
        resets_at=datetime(2020, 1, 1, 11, tzinfo=UTC))

    body = body_of(api.get(f"/api/v1/limits/{created['id']}"))

    limit = Limit.objects.get()
    assert (body["used"], limit.used) == (0, 0)
    assert limit.resets_at == window_of("hour", project, utcnow())[1]
    assert limit.window_start > past


def test_the_lazy_reset_resets_once_when_two_readers_see_the_old_window(project):
    limit = services.limit_create(project=project, scope="project", window="day", amount=1, actor="test")
    Limit.objects.filter(pk=limit.pk).update(used=Decimal("0.5"), resets_at=datetime(2020, 1, 2, tzinfo=UTC))
    stale = Limit.objects.get(pk=limit.pk)
    limits_current(project, [Limit.objects.get(pk=limit.pk)])
    Limit.objects.filter(pk=limit.pk).update(used=Decimal("0.25"))  # spend recorded in the new window

    (again,) = limits_current(project, [stale])

    assert again.used == Decimal("0.25")


def test_an_hour_window_follows_the_projects_zone(project):
    project.timezone = "Asia/Kolkata"  # UTC+5:30: its hours start at half past in UTC
    at = datetime(2026, 3, 1, 10, 10, tzinfo=UTC)

    window = window_of("hour", project, at)

    assert window == (datetime(2026, 3, 1, 9, 30, tzinfo=UTC),
                                                 datetime(2026, 3, 1, 10, 30, tzinfo=UTC))
