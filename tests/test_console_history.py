"""History on screen: the audit log (filters, before → after, pages) and the alerts with a test webhook."""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils.timezone import now

from budgets import services
from budgets.models import Alert, AuditLog, Project
from budgets.services.alerts import verify_signature

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def owner(db):
    return User.objects.create_user("olivia")


@pytest.fixture
def team(owner):
    return services.project_create(name="acme", actor="test", owner=owner)


@pytest.fixture
def client(owner):
    client = Client()
    client.force_login(owner)
    return client


def test_the_audit_log_shows_who_changed_what_from_before_to_after(client, team):
    services.budget_set(project=team, user_id="alice", total_budget=Decimal(10), actor="user:olivia")
    services.budget_set(project=team, user_id="alice", total_budget=Decimal(25), actor="key:bm_abc")

    response = client.get(reverse("audit_log", args=[team.pk]), {"action": "budget_update"})

    page = response.content.decode()
    assert response.status_code == 200
    assert "key:bm_abc" in page and "budget_update" in page
    before_after = ('<span class="audit-before">10.000000000000</span> → '
                    '<span class="audit-after">25.000000000000</span>')
    assert before_after in page
    assert "budget_create" not in page.split('id="audit-table"')[1]


def test_a_project_update_shows_only_the_fields_it_changed(client, team):
    services.project_update(project=team, actor="user:olivia", max_budget=Decimal(100), timezone="UTC")
    client.post(reverse("project_settings_save", args=[team.pk]),
                {"name": "acme", "max_budget": "100", "timezone": "Europe/Berlin", "duration": "monthly"})

    response = client.get(reverse("audit_log", args=[team.pk]), {"action": "project_update"})

    assert response.status_code == 200
    rows = response.content.decode().split("<tbody>")[1].split("</tbody>")[0].split("<tr>")[1:]
    assert len(rows) == 2
    latest, first = rows
    # The console's save sends every field; only the time zone changed.
    assert '<span class="audit-before">UTC</span> → <span class="audit-after">Europe/Berlin</span>' in latest
    assert "name:" not in latest and "max_budget:" not in latest and "→ —" not in latest
    assert "max_budget:" in first and "timezone:" not in first and "name:" not in first


@pytest.mark.parametrize("filters, expected", [
    ({"user_id": "bob"}, 1), ({"actor": "user:olivia"}, 1), ({"action": "budget_create"}, 2), ({}, 4)])
def test_the_audit_log_filters_by_user_action_and_actor(client, team, filters, expected):
    services.budget_set(project=team, user_id="alice", total_budget=Decimal(1), actor="user:olivia")
    services.budget_set(project=team, user_id="bob", total_budget=Decimal(1), actor="key:bm_x")

    response = client.get(reverse("audit_log", args=[team.pk]), filters)

    assert response.context["page"].paginator.count == expected


def test_the_audit_log_has_pages_of_50(client, team):
    AuditLog.objects.bulk_create([AuditLog(project=team, action="x", actor="test") for _ in range(120)])

    first = client.get(reverse("audit_log", args=[team.pk]))
    last = client.get(reverse("audit_log", args=[team.pk]), {"page": 3})

    assert len(first.context["rows"]) == 50
    assert len(last.context["rows"]) == 122 - 100
    assert "Page 1 of 3" in first.content.decode()


def test_the_alert_history_shows_delivery_status_attempts_and_errors(client, team):
    at = now()
    Alert.objects.create(project=team, scope="user", user_id="alice", threshold=80, period_start=at,
                         spend=Decimal("8.5"), limit=Decimal(10), attempts=5, last_error="webhook answered HTTP 500")
    Alert.objects.create(project=team, scope="project", threshold=100, period_start=at, spend=Decimal(100),
                         limit=Decimal(100), attempts=1, delivered_at=at)

    page = client.get(reverse("alert_history", args=[team.pk])).content.decode()

    assert "webhook answered HTTP 500" in page and "failed" in page and "delivered" in page
    assert "$8.50 / $10.00" in page and "project cap" in page


class _Receiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Receiver.received.append((dict(self.headers.items()), body))
        self.send_response(202)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(b"thanks " + b"x" * 5000)

    def log_message(self, *args):
        pass


@pytest.fixture
def receiver():
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    _Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_a_test_webhook_is_signed_like_an_alert_and_the_answer_is_shown(client, team, receiver):
    Project.objects.filter(pk=team.pk).update(alert_webhook_url=receiver)
    team.refresh_from_db()

    response = client.post(reverse("webhook_test", args=[team.pk]))

    assert response.status_code == 200
    headers, body = _Receiver.received[0]
    assert verify_signature(team.webhook_secret, headers, body)
    assert json.loads(body)["type"] == "budget.test"
    test = response.context["test"]
    assert test.status == 202 and test.answer.startswith("thanks") and len(test.answer) == 2048
    page = response.content.decode()
    assert "HTTP 202" in page and headers["X-Budget-Signature"] in page
    audit = AuditLog.objects.get(project=team, action="webhook_test")
    assert (audit.actor, audit.after["status"]) == ("user:olivia", 202)


def test_a_test_webhook_without_a_url_says_so_and_writes_nothing(client, team):
    before = AuditLog.objects.count()

    response = client.post(reverse("webhook_test", args=[team.pk]))

    assert response.status_code == 400
    assert "no webhook URL" in response.content.decode()
    assert AuditLog.objects.count() == before
