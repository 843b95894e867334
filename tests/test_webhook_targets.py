"""Where an alert webhook may go: http(s) only, and in production no loopback, link-local or private target (SSRF)."""

from __future__ import annotations

import socket
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.base.errors import InvalidInput
from budgets.models import Alert, AuditLog, Project
from budgets.services import alerts
from tests.celery_support import WebhookReceiver

pytestmark = pytest.mark.django_db

FORBIDDEN = [
    "http://127.0.0.1/hook", "http://127.1.2.3:8080/x", "http://localhost/hook", "http://[::1]/hook",
    "http://169.254.169.254/latest/meta-data/", "http://[fe80::1]/x", "http://10.0.0.5/hook", "http://172.16.0.1/",
    "https://192.168.1.10/hook", "http://100.64.0.1/", "http://0.0.0.0/", "http://224.0.0.1/", "http://[ff02::1]/",
    "http://[::ffff:127.0.0.1]/hook", "http://[::ffff:169.254.169.254]/",
]
NOT_HTTP = ["ftp://hooks.example.com/x", "file:///etc/passwd", "gopher://8.8.8.8/", "javascript:alert(1)", "http:///x"]


@pytest.fixture
def production(settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    return settings


def public_dns(monkeypatch, answers: dict[str, list[str]]) -> list[str]:
    """Answer getaddrinfo from `answers` (host → addresses, consumed in turn when several lists are given)."""
    asked: list[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host not in answers:  # an address literal, as socket.create_connection passes it
            return real(host, port, *args, **kwargs)
        asked.append(host)
        found = answers[host]
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in found]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def one_alert(project: Project) -> Alert:
    services.budget_set(project=project, user_id="alice", total_budget=Decimal(10), actor="test")
    return Alert.objects.create(project=project, scope=Alert.Scope.USER, user_id="alice", threshold=80,
                                period_start=project.period_start, spend=Decimal(9), limit=Decimal(10))


@pytest.mark.parametrize("url", FORBIDDEN)
def test_production_refuses_private_loopback_link_local_and_multicast_targets(project, production, url):
    with pytest.raises(InvalidInput, match="public address"):
        services.project_update(project=project, actor="test", alert_webhook_url=url)

    project.refresh_from_db()
    assert project.alert_webhook_url == ""
    assert not AuditLog.objects.filter(action="project_update").exists()


@pytest.mark.parametrize("url", NOT_HTTP)
def test_only_http_and_https_urls_are_taken_even_where_private_targets_are_allowed(project, url):
    with pytest.raises(InvalidInput, match="http"):
        services.project_update(project=project, actor="test", alert_webhook_url=url)
    project.refresh_from_db()
    assert project.alert_webhook_url == ""


def test_a_public_target_is_saved(project, production, monkeypatch):
    public_dns(monkeypatch, {"hooks.example.com": ["93.184.215.14"]})

    services.project_update(project=project, actor="test", alert_webhook_url="https://hooks.example.com/budget")

    project.refresh_from_db()
    assert project.alert_webhook_url == "https://hooks.example.com/budget"


def test_a_name_that_resolves_to_a_private_address_is_refused(project, production, monkeypatch):
    public_dns(monkeypatch, {"internal.example.com": ["93.184.215.14", "10.1.2.3"]})

    with pytest.raises(InvalidInput, match=r"10\.1\.2\.3"):
        services.project_update(project=project, actor="test", alert_webhook_url="https://internal.example.com/")


def test_private_targets_are_allowed_when_the_setting_says_so(project, settings):
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = True

    services.project_update(project=project, actor="test", alert_webhook_url="http://10.0.0.5/hook")

    project.refresh_from_db()
    assert project.alert_webhook_url == "http://10.0.0.5/hook"


def test_send_time_checks_again_and_a_stored_private_url_gets_nothing(project, production):
    with WebhookReceiver() as receiver:
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=receiver.url)  # saved before the rule
        project.refresh_from_db()
        alert = one_alert(project)

        with pytest.raises(alerts.DeliveryFailed, match="refused"):
            alerts.webhook_send(alert, project)

    assert receiver.received == []


def test_a_name_rebound_to_loopback_after_saving_gets_nothing(project, production, monkeypatch):
    with WebhookReceiver() as receiver:
        port = receiver.server.server_address[1]
        asked = public_dns(monkeypatch, {"hooks.example.com": ["93.184.215.14"]})
        services.project_update(project=project, actor="test", alert_webhook_url=f"http://hooks.example.com:{port}/h")
        public_dns(monkeypatch, {"hooks.example.com": ["127.0.0.1"]})  # the attacker's DNS answers differently now
        alert = one_alert(project)

        with pytest.raises(alerts.DeliveryFailed, match="refused"):
            alerts.webhook_send(alert, project)

    assert asked == ["hooks.example.com"]
    assert receiver.received == []


def test_the_connection_goes_to_the_address_that_was_checked(project, settings, monkeypatch):
    # The checked address is used for the connection (the name is not looked up again by the
    # HTTP client): here the receiver is only reachable through the address DNS gave.
    settings.ALERT_WEBHOOK_ALLOW_PRIVATE = False
    monkeypatch.setattr(alerts, "forbidden_address", lambda address: False)  # treat loopback as public here
    with WebhookReceiver() as receiver:
        port = receiver.server.server_address[1]
        answers = {"hooks.invalid": ["127.0.0.1"]}
        public_dns(monkeypatch, answers)
        Project.objects.filter(pk=project.pk).update(alert_webhook_url=f"http://hooks.invalid:{port}/hook")
        project.refresh_from_db()

        alerts.webhook_send(one_alert(project), project)

    [request] = receiver.received
    assert request.path == "/hook"
    assert {n.lower(): v for n, v in request.headers.items()}["host"] == f"hooks.invalid:{port}"
    headers = {name.lower(): value for name, value in request.headers.items()}
    assert headers[alerts.SIGNATURE_HEADER.lower()].startswith("sha256=")


def test_the_console_settings_form_shows_the_refusal(project, production):
    staff = get_user_model().objects.create_user("sam", password="pw-sam-123456", is_staff=True)
    client = Client()
    client.force_login(staff)

    response = client.post(reverse("alert_settings_save", args=[project.pk]), {
        "alert_thresholds": "80", "alert_webhook_url": "http://169.254.169.254/latest/meta-data/"})

    assert response.status_code == 400
    assert "public address" in response.content.decode()
    project.refresh_from_db()
    assert project.alert_webhook_url == ""


# IPv6 addresses that carry an IPv4 address inside them (or that are private by themselves),
# each with the IPv4 or the range it reaches.
IPV6_WRAPPED = [
    "http://[::7f00:1]/hook",                   # IPv4-compatible ::127.0.0.1
    "http://[::a9fe:a9fe]/hook",                # IPv4-compatible ::169.254.169.254
    "http://[::ffff:127.0.0.1]/hook",           # IPv4-mapped
    "http://[::ffff:0:a9fe:a9fe]/hook",         # IPv4-translated (SIIT) 169.254.169.254
    "http://[64:ff9b::a9fe:a9fe]/hook",         # NAT64 of 169.254.169.254
    "http://[64:ff9b::7f00:1]/hook",            # NAT64 of 127.0.0.1
    "http://[64:ff9b:1::a9fe:a9fe]/hook",       # local-use NAT64 prefix
    "http://[2002:a9fe:a9fe::1]/hook",          # 6to4 of 169.254.169.254
    "http://[2002:7f00:1::1]/hook",             # 6to4 of 127.0.0.1
    "http://[fec0::1]/hook",                    # site-local
    "http://[2001:0:a9fe:a9fe::1]/hook",        # Teredo, server 169.254.169.254
    "http://[2001:0:808:808:0:0:80ff:fefe]/hook",  # Teredo, client 127.0.1.1 (obfuscated), public server
    "http://[2600::5efe:a9fe:a9fe]/hook",       # ISATAP interface id around 169.254.169.254
    "http://[2600::200:5efe:7f00:1]/hook",      # ISATAP (universal bit) around 127.0.0.1
]


@pytest.mark.parametrize("url", IPV6_WRAPPED)
def test_an_ipv6_address_wrapping_a_private_ipv4_address_is_refused_at_save(project, production, url):
    with pytest.raises(InvalidInput, match="public address"):
        services.project_update(project=project, actor="test", alert_webhook_url=url)

    project.refresh_from_db()
    assert project.alert_webhook_url == ""
    assert not AuditLog.objects.filter(action="project_update").exists()


@pytest.mark.parametrize("url", IPV6_WRAPPED)
def test_an_ipv6_address_wrapping_a_private_ipv4_address_gets_nothing_at_send(project, production, monkeypatch, url):
    connected: list[object] = []
    monkeypatch.setattr(alerts._PinnedHTTPConnection, "connect", lambda self: connected.append(self))
    Project.objects.filter(pk=project.pk).update(alert_webhook_url=url)  # saved before the rule
    project.refresh_from_db()

    with pytest.raises(alerts.DeliveryFailed, match="refused"):
        alerts.webhook_send(one_alert(project), project)

    assert connected == []


@pytest.mark.parametrize("address", [
    "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1", "2600::5efe:808:808",
])
def test_ipv6_addresses_that_wrap_a_public_ipv4_address_stay_allowed(address):
    assert alerts.forbidden_address(address) is False
