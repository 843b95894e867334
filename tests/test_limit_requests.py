"""Limit requests and approvals (issue 22, item 2): an application asks, a person decides, once."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import close_old_connections, connection
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.base.errors import Conflict, Forbidden
from budgets.models import Alert, AuditLog, Limit, LimitIncrease, LimitRequest, Project, Role
from budgets.services import alerts
from budgets.services.limit_requests import limit_request_create, limit_request_decide
from tests.api_helpers import assert_error, body_of
from tests.celery_support import WebhookReceiver
from tests.test_limit_raises import make_limit

pytestmark = pytest.mark.django_db

START = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
UNTIL = datetime(2026, 3, 12, 0, 0, tzinfo=UTC)
User = get_user_model()


@pytest.fixture
def queued(monkeypatch) -> list[int]:
    ids: list[int] = []
    monkeypatch.setattr(alerts, "queue_delivery", lambda alert_id, **options: ids.append(alert_id) or True)
    return ids


def person(project: Project, name: str, role: str) -> Client:
    user = User.objects.create_user(name, email=f"{name}@example.com", password="pw-123456-x")
    services.member_add(project=project, user=user, role=role, actor="test")
    client = Client()
    client.force_login(user)
    return client


def ask(api, body: dict, user: str = "alice"):
    return api.post(f"/api/v1/users/{user}/limit-requests", body)


# --- asking ------------------------------------------------------------------------------------------


@pytest.fixture
def alice(project, make_budget, time_machine) -> Limit:
    time_machine.move_to(START, tick=False)
    make_budget("alice", total_budget="100")
    return make_limit(project)


def test_an_application_asks_for_the_binding_limit_by_default_and_polls(api, project, alice):
    make_limit(project, amount="100", window="year")  # more room: not binding
    response = ask(api, {"amount": 5, "reason": "demo at 3pm", "until": UNTIL.isoformat()})

    assert response.status_code == 201, response.content
    made = body_of(response)
    assert (made["status"], made["limit_id"], made["amount"], made["user"]) == ("pending", alice.pk, 5, "alice")
    assert made["reason"] == "demo at 3pm" and datetime.fromisoformat(made["until"]) == UNTIL
    assert made["requested_by"].startswith("key:") and made["decided_by"] is None
    assert body_of(api.get(f"/api/v1/limit-requests/{made['id']}")) == made
    assert AuditLog.objects.get(action="limit_request").after["id"] == made["id"]
    assert LimitIncrease.objects.count() == 0  # nothing raised yet


def test_a_request_may_name_a_limit_that_applies_to_the_user(api, project, alice):
    other = make_limit(project, amount="100", window="year")
    bobs = make_limit(project, subject="bob")

    assert body_of(ask(api, {"amount": 1, "limit_id": other.pk}))["limit_id"] == other.pk
    assert_error(ask(api, {"amount": 1, "limit_id": bobs.pk}), 422, "validation_error")
    assert_error(ask(api, {"amount": 1, "limit_id": 999999}), 404, "not_found")


@pytest.mark.parametrize(("body", "status"), [
    ({}, 400), ({"amount": -1}, 400), ({"amount": 0}, 400), ({"amount": "5"}, 400),
    ({"amount": 1, "until": "2026-03-01T00:00:00Z"}, 422), ({"amount": 1, "reason": "x" * 2001}, 400),
    ({"amount": 1, "limit_id": "1"}, 400), ({"amount": 1, "colour": "red"}, 400),
])
def test_a_bad_request_is_a_clear_error_and_writes_nothing(api, alice, body, status):
    assert ask(api, body).status_code == status
    assert LimitRequest.objects.count() == 0 and not AuditLog.objects.filter(action="limit_request").exists()


def test_a_user_without_a_limit_row_cannot_ask(api, project, make_budget, time_machine):
    time_machine.move_to(START, tick=False)
    make_budget("carol")
    assert_error(ask(api, {"amount": 1}, user="carol"), 422, "validation_error")


def test_another_project_s_request_is_not_found(api, alice, make_api):
    other = services.project_create(name="other")
    services.budget_set(project=other, user_id="alice", total_budget=Decimal(1), actor="t")
    make_limit(other)
    theirs = body_of(ask(make_api(in_project=other), {"amount": 1}))

    assert_error(api.get(f"/api/v1/limit-requests/{theirs['id']}"), 404, "not_found")


# --- an API key never decides ----------------------------------------------------------------------


@pytest.mark.parametrize("verb", ["approve", "deny"])
def test_an_api_key_cannot_approve_or_deny_a_request(api, alice, verb):
    made = body_of(ask(api, {"amount": 5, "until": UNTIL.isoformat()}))

    error = assert_error(api.post(f"/api/v1/limit-requests/{made['id']}/{verb}", {}), 403, "forbidden")

    assert "console" in error["message"]
    assert LimitRequest.objects.get().status == "pending" and LimitIncrease.objects.count() == 0


# --- people decide -----------------------------------------------------------------------------------


def decide(client: Client, project: Project, request_id: int, **data):
    return client.post(reverse("limit_request_decide", args=[project.pk, request_id]), data)


def test_a_manager_approves_a_raise_until_the_asked_end_and_the_limit_grows(api, project, alice, queued):
    made = body_of(ask(api, {"amount": 5, "until": UNTIL.isoformat(), "reason": "launch"}))
    manager = person(project, "mia", Role.MANAGER)

    response = decide(manager, project, made["id"], decision="raise", amount="5",
                      until="2026-03-12T00:00", note="go")

    assert response.status_code == 302
    polled = body_of(api.get(f"/api/v1/limit-requests/{made['id']}"))
    assert (polled["status"], polled["decided_by"], polled["decision"], polled["note"]) == (
        "approved", "user:mia", "raise", "go")
    increase = LimitIncrease.objects.get()
    assert polled["increase_id"] == increase.pk and increase.request_id == made["id"]
    assert (increase.amount, increase.ends_at, increase.actor) == (5, UNTIL, "user:mia")
    alice.refresh_from_db()
    assert (alice.raised, alice.raises_end_at) == (5, UNTIL)
    assert body_of(api.get(f"/api/v1/limits/{alice.pk}"))["limit"] == 6
    assert set(AuditLog.objects.values_list("action", flat=True)) >= {"limit_request", "limit_request_decide",
                                                                       "limit_raise"}
    assert list(Alert.objects.order_by("pk").values_list("kind", flat=True)) == ["limit_request",
                                                                                 "limit_request_decided"]


def test_an_approval_may_change_the_end_or_make_the_change_permanent(api, project, alice):
    first = body_of(ask(api, {"amount": 5}))
    second = body_of(ask(api, {"amount": 2}))
    owner = person(project, "olga", Role.OWNER)

    assert decide(owner, project, first["id"], decision="raise", amount="3", windows="1").status_code == 302
    assert decide(owner, project, second["id"], decision="permanent", amount="2").status_code == 302

    alice.refresh_from_db()
    assert (alice.amount, alice.raised, alice.raises_end_at) == (3, 3, alice.resets_at)
    assert LimitRequest.objects.get(pk=second["id"]).increase is None


def test_a_raise_needs_an_end_when_the_request_asked_none(api, project, alice):
    made = body_of(ask(api, {"amount": 5}))
    owner = person(project, "olga", Role.OWNER)

    assert decide(owner, project, made["id"], decision="raise", amount="5").status_code == 400
    assert LimitRequest.objects.get().status == "pending" and LimitIncrease.objects.count() == 0


def test_a_denial_keeps_its_note_and_raises_nothing(api, project, alice):
    made = body_of(ask(api, {"amount": 5, "until": UNTIL.isoformat()}))
    owner = person(project, "olga", Role.OWNER)

    assert decide(owner, project, made["id"], decision="deny", note="not this month").status_code == 302

    polled = body_of(api.get(f"/api/v1/limit-requests/{made['id']}"))
    assert (polled["status"], polled["note"], polled["increase_id"]) == ("denied", "not this month", None)
    assert LimitIncrease.objects.count() == 0
    assert decide(owner, project, made["id"], decision="raise", amount="5").status_code == 400  # decided already
    assert LimitRequest.objects.get().status == "denied"


def test_a_viewer_sees_the_requests_but_cannot_decide(api, project, alice):
    made = body_of(ask(api, {"amount": 5, "until": UNTIL.isoformat()}))
    viewer = person(project, "vic", Role.VIEWER)

    page = viewer.get(reverse("limit_requests", args=[project.pk]))
    refused = decide(viewer, project, made["id"], decision="deny")

    assert page.status_code == 200 and f'data-request-id="{made["id"]}"' in page.content.decode()
    assert "decide-form" not in page.content.decode() and "pending-requests-badge" not in page.content.decode()
    assert refused.status_code == 403 and LimitRequest.objects.get().status == "pending"


def test_owners_and_managers_see_the_pending_count_in_the_navigation(api, project, alice):
    ask(api, {"amount": 5, "until": UNTIL.isoformat()})
    ask(api, {"amount": 1, "until": UNTIL.isoformat()})
    manager = person(project, "mia", Role.MANAGER)

    page = manager.get(reverse("limit_list", args=[project.pk])).content.decode()

    assert 'id="pending-requests-badge"' in page and ">2</span>" in page


def test_a_person_cannot_approve_a_request_they_made_in_the_console(project, alice):
    manager = person(project, "mia", Role.MANAGER)
    asked = manager.post(reverse("limit_request_new", args=[project.pk]),
                         {"user_id": "alice", "amount": "2", "until": "2026-03-12T00:00", "reason": "for me"})
    assert asked.status_code == 302
    made = LimitRequest.objects.get()
    assert made.requested_by == "user:mia"

    page = manager.get(reverse("limit_requests", args=[project.pk])).content.decode()
    refused = decide(manager, project, made.pk, decision="raise", amount="2", until="2026-03-12T00:00")

    assert "decide-form" not in page and refused.status_code == 400
    assert "another owner or manager" in refused.content.decode()
    made.refresh_from_db()
    assert made.status == "pending" and LimitIncrease.objects.count() == 0
    with pytest.raises(Forbidden):
        limit_request_decide(request=made, approve=True, actor="user:mia", until=UNTIL)
    owner = person(project, "olga", Role.OWNER)
    assert decide(owner, project, made.pk, decision="raise", amount="2", until="2026-03-12T00:00").status_code == 302


def test_the_requests_page_lists_pending_first_then_decided(api, project, alice):
    first = body_of(ask(api, {"amount": 1, "until": UNTIL.isoformat()}))
    second = body_of(ask(api, {"amount": 2, "until": UNTIL.isoformat()}))
    third = body_of(ask(api, {"amount": 3, "until": UNTIL.isoformat()}))
    owner = person(project, "olga", Role.OWNER)
    decide(owner, project, first["id"], decision="deny")

    page = owner.get(reverse("limit_requests", args=[project.pk])).content.decode()

    order = [page.index(f'data-request-id="{item["id"]}"') for item in (second, third, first)]
    assert order == sorted(order)


def test_a_raise_from_the_limits_page_and_from_the_user_s_page(project, alice):
    manager = person(project, "mia", Role.MANAGER)

    from_limits = manager.post(reverse("limit_raise_new", args=[project.pk, alice.pk]),
                               {"amount": "2", "until": "2026-03-11T09:30"})
    from_user = manager.post(reverse("limit_raise_new", args=[project.pk, alice.pk]),
                             {"amount": "1", "windows": "1", "user": "alice"})
    refused = manager.post(reverse("limit_raise_new", args=[project.pk, alice.pk]), {"amount": "1"})

    assert from_limits["Location"] == reverse("limit_list", args=[project.pk])
    assert from_user["Location"] == reverse("user_detail", args=[project.pk, "alice"])
    assert refused.status_code == 302 and LimitIncrease.objects.count() == 2
    alice.refresh_from_db()
    assert alice.raised == 3 and alice.raises_end_at == datetime(2026, 3, 11, 9, 30, tzinfo=UTC)
    limits_page = manager.get(reverse("limit_list", args=[project.pk])).content.decode()
    assert 'id="active-raises"' in limits_page and "limit-raised" in limits_page
    user_page = manager.get(reverse("user_detail", args=[project.pk, "alice"])).content.decode()
    assert "limit-raise-form" in user_page
    end = LimitIncrease.objects.order_by("pk").first()
    assert manager.post(reverse("limit_raise_remove", args=[project.pk, alice.pk, end.pk])).status_code == 302
    alice.refresh_from_db()
    assert alice.raised == 1


# --- notifications ---------------------------------------------------------------------------------


def test_a_request_and_its_decision_are_each_delivered_once_signed(api, project, alice, time_machine):
    with WebhookReceiver() as receiver:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url, alert_email="ops@example.com")
        project.refresh_from_db()
        made = body_of(ask(api, {"amount": 5, "until": UNTIL.isoformat(), "reason": "demo"}))
        request = LimitRequest.objects.get(pk=made["id"])
        limit_request_decide(request=request, approve=False, actor="user:olga", note="no")
        for alert in Alert.objects.order_by("pk"):
            assert alerts.alert_deliver(alert_id=alert.pk).status == "delivered"
            assert alerts.alert_deliver(alert_id=alert.pk).status == "skipped"  # once
        assert alerts.alerts_requeue(at=START + timedelta(hours=1)) == 0

    from django.core import mail

    assert len(receiver.received) == 2 and len(mail.outbox) == 2
    bodies = [json.loads(item.body) for item in receiver.received]
    assert [body["type"] for body in bodies] == ["budget.limit_request", "budget.limit_request_decided"]
    assert bodies[0]["request"]["status"] == "pending" and bodies[1]["request"]["status"] == "denied"
    assert bodies[0]["request"]["amount"] == 5 and bodies[1]["request"]["note"] == "no"
    assert bodies[0]["limit_id"] == alice.pk and "asks 5" in bodies[0]["message"]
    for item in receiver.received:
        headers = {name.title(): value for name, value in item.headers.items()}
        assert alerts.verify_signature(project.webhook_secret, headers, item.body)
    assert "limit request" in mail.outbox[0].subject


def test_two_events_of_the_same_kind_for_one_request_are_one(project, alice):
    request = limit_request_create(project=project, user_id="alice", amount=1, requested_by="key:x")
    assert alerts.limit_request_event(request, Alert.Kind.LIMIT_REQUEST) is None
    assert Alert.objects.filter(limit_request=request).count() == 1


def test_the_alerts_api_lists_request_events_with_their_kind(api, alice):
    ask(api, {"amount": 5, "until": UNTIL.isoformat()})

    items = body_of(api.get("/api/v1/alerts"))["items"]

    assert [(item["kind"], item["request"]["amount"]) for item in items] == [("limit_request", 5)]


def test_deciding_twice_is_a_conflict(project, alice):
    request = limit_request_create(project=project, user_id="alice", amount=1, requested_by="key:x", until=UNTIL)
    limit_request_decide(request=request, approve=True, actor="user:a")
    with pytest.raises(Conflict):
        limit_request_decide(request=LimitRequest.objects.get(), approve=True, actor="user:b")
    assert LimitIncrease.objects.count() == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_managers_approving_at_once_yield_one_raise(project, make_budget):
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL: two connections at once")
    make_budget("alice", total_budget="100")
    limit = make_limit(project)
    request = limit_request_create(project=project, user_id="alice", amount=5, requested_by="key:app",
                                   until=datetime.now(UTC) + timedelta(days=1))
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def approve(who: int) -> None:
        try:
            barrier.wait()
            limit_request_decide(request=LimitRequest.objects.get(pk=request.pk), approve=True,
                                 actor=f"user:manager{who}")
            outcomes.append("approved")
        except Conflict:
            outcomes.append("conflict")
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=approve, args=(who,)) for who in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["approved"] + ["conflict"] * 7
    assert LimitIncrease.objects.count() == 1
    limit.refresh_from_db()
    assert limit.raised == 5
    assert AuditLog.objects.filter(action="limit_raise").count() == 1
    assert Alert.objects.filter(kind="limit_request_decided").count() == 1
