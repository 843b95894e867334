"""The console's views: who sees which project, POST-only actions with CSRF, forms, charts, export, scale."""

from __future__ import annotations

import csv
import html
import io
import json
import re
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from django.contrib.auth import get_user_model
from django.http import StreamingHttpResponse
from django.test import Client
from django.urls import reverse

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import ApiKey, AuditLog, CostEvent, ModelSpend, Project, UserBudget
from budgets.selectors.console import DateRange, csv_text, forecast
from budgets.templatetags.console import format_dollars

pytestmark = pytest.mark.django_db

User = get_user_model()


# --- fixtures -----------------------------------------------------------------------------------


@pytest.fixture
def member(project):
    person = User.objects.create_user("mia", password="pw-mia-123456")
    project.members.add(person)
    return person


@pytest.fixture
def client_for(member):
    def make(person=None, **kwargs) -> Client:
        client = Client(**kwargs)
        client.force_login(person or member)
        return client

    return make


@pytest.fixture
def client(client_for) -> Client:
    return client_for()


@pytest.fixture
def other_project(db) -> Project:
    """Someone else's project, with a user, a key and spend."""
    other = services.project_create(name="other-team", timezone="UTC")
    services.budget_set(project=other, user_id="bob", total_budget=Decimal(5), actor="test")
    services.cost_record(project=other, user_id="bob", usage=Usage("gpt-4o-mini", 1000, 100), source="api")
    services.api_key_create(project=other, name="theirs")
    return other


def record(project, user="alice", model="gpt-4o-mini", prompt=1000, completion=200, cost=None):
    return services.cost_record(project=project, user_id=user, usage=Usage(model, prompt, completion), cost=cost,
                                source="api")


def page_urls(project: Project, user_id: str = "alice") -> dict[str, str]:
    """Every page (GET) of a project."""
    pk = project.pk
    return {
        "overview": reverse("project_overview", args=[pk]),
        "users": reverse("user_list", args=[pk]),
        "user": reverse("user_detail", args=[pk, user_id]),
        "models": reverse("model_list", args=[pk]),
        "keys": reverse("key_list", args=[pk]),
        "settings": reverse("project_settings", args=[pk]),
        "export": reverse("export_csv", args=[pk]),
    }


def action_posts(project: Project, user_id: str = "alice", key_id: int = 0) -> dict[str, tuple[str, dict]]:
    """Every state-changing action of a project, with valid form data."""
    pk = project.pk
    return {
        "create budget": (reverse("budget_create", args=[pk]),
                          {"user_id": "carol", "total_budget": "7", "duration": "monthly"}),
        "edit budget": (reverse("budget_edit", args=[pk, user_id]), {"total_budget": "99", "duration": "weekly"}),
        "reset": (reverse("budget_reset", args=[pk, user_id]), {}),
        "delete": (reverse("budget_delete", args=[pk, user_id]), {}),
        "create key": (reverse("key_create", args=[pk]), {"name": "ci"}),
        "revoke key": (reverse("key_revoke", args=[pk, key_id]), {}),
        "project settings": (reverse("project_settings_save", args=[pk]), {"max_budget": "1", "timezone": "UTC"}),
        "alert settings": (reverse("alert_settings_save", args=[pk]), {"alert_thresholds": "50"}),
    }


def state(project: Project) -> tuple:
    """What an action could change: budgets, spend, keys, settings, audit rows."""
    project.refresh_from_db()
    return (
        list(UserBudget.objects.filter(project=project).values_list("user_id", "total_budget", "duration",
                                                                    "current_spend")),
        list(ApiKey.objects.filter(project=project).values_list("name", "revoked_at")),
        (project.max_budget, project.timezone, project.alert_thresholds),
        AuditLog.objects.filter(project=project).count(),
    )


def chart_spec(response, chart_id: str) -> dict:
    match = re.search(rf'<script id="{chart_id}-data" type="application/json">(.*?)</script>',
                      response.content.decode(), re.DOTALL)
    assert match, f"no chart {chart_id!r} on the page"
    return json.loads(match.group(1))


# --- login and visibility ----------------------------------------------------------------------


def test_pages_need_a_login(project):
    response = Client().get(reverse("project_list"))

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_the_login_page_is_a_crispy_form_and_logs_in(member):
    client = Client()
    page = client.get(reverse("login"))
    assert page.status_code == 200
    assert 'id="id_username"' in page.content.decode() and "form-control" in page.content.decode()

    response = client.post(reverse("login"), {"username": "mia", "password": "pw-mia-123456"})

    assert response.status_code == 302
    assert client.get(reverse("project_list")).status_code == 200


def test_logout_is_a_post(client):
    assert client.get(reverse("logout")).status_code == 405

    assert client.post(reverse("logout")).status_code == 302
    assert client.get(reverse("project_list")).status_code == 302


def test_a_member_sees_only_the_projects_they_belong_to(client, project, other_project):
    response = client.get(reverse("project_list"))

    assert response.status_code == 200
    assert "acme" in response.content.decode()
    assert "other-team" not in response.content.decode()


def test_staff_see_every_project(client_for, project, other_project):
    staff = User.objects.create_user("sam", password="pw", is_staff=True)

    response = client_for(staff).get(reverse("project_list"))

    assert response.status_code == 200
    assert "acme" in response.content.decode() and "other-team" in response.content.decode()


@pytest.mark.parametrize("page", ["overview", "users", "user", "models", "keys", "settings", "export"])
def test_every_page_of_another_project_is_404(client, other_project, page):
    response = client.get(page_urls(other_project, "bob")[page])

    assert response.status_code == 404


@pytest.mark.parametrize("action", list(action_posts(Project(pk=1))))
def test_every_action_on_another_project_is_404_and_changes_nothing(client, other_project, action):
    key = ApiKey.objects.get(project=other_project)
    before = state(other_project)

    url, data = action_posts(other_project, "bob", key.pk)[action]
    response = client.post(url, data)

    assert response.status_code == 404
    assert state(other_project) == before


def test_a_user_or_key_of_another_project_is_404_through_your_own_project(client, project, other_project):
    key = ApiKey.objects.get(project=other_project)

    assert client.get(reverse("user_detail", args=[project.pk, "bob"])).status_code == 404
    assert client.post(reverse("budget_reset", args=[project.pk, "bob"])).status_code == 404
    assert client.post(reverse("key_revoke", args=[project.pk, key.pk])).status_code == 404
    key.refresh_from_db()
    assert key.is_active
    assert UserBudget.objects.get(project=other_project).current_spend > 0


def test_a_project_that_does_not_exist_is_404(client):
    assert client.get(reverse("project_overview", args=[999999])).status_code == 404


# --- POST only, with CSRF -------------------------------------------------------------------------


@pytest.mark.parametrize("action", list(action_posts(Project(pk=1))))
def test_every_action_refuses_get(client, project, make_budget, action):
    make_budget("alice")
    key, _ = services.api_key_create(project=project, name="k")
    before = state(project)

    url, _ = action_posts(project, "alice", key.pk)[action]
    response = client.get(url)

    assert response.status_code == 405
    assert state(project) == before


@pytest.mark.parametrize("action", list(action_posts(Project(pk=1))))
def test_every_action_without_a_csrf_token_is_refused(client_for, project, make_budget, action):
    make_budget("alice")
    key, _ = services.api_key_create(project=project, name="k")
    before = state(project)
    client = client_for(enforce_csrf_checks=True)

    url, data = action_posts(project, "alice", key.pk)[action]
    response = client.post(url, data)

    assert response.status_code == 403
    assert state(project) == before


def test_an_action_with_the_pages_csrf_token_goes_through(client_for, project):
    client = client_for(enforce_csrf_checks=True)
    client.get(reverse("user_list", args=[project.pk]))  # sets the CSRF cookie, as a browser would
    token = client.cookies["csrftoken"].value

    response = client.post(reverse("budget_create", args=[project.pk]),
                           {"user_id": "carol", "total_budget": "7", "duration": "monthly",
                            "csrfmiddlewaretoken": token})

    assert response.status_code == 302
    assert UserBudget.objects.get(project=project, user_id="carol").total_budget == Decimal(7)


# --- empty project, and scale ----------------------------------------------------------------------


@pytest.mark.parametrize("page", ["overview", "users", "models", "keys", "settings", "export"])
def test_every_page_renders_for_an_empty_project(client, project, page):
    response = client.get(page_urls(project)[page])

    assert response.status_code == 200


def test_an_empty_project_says_what_to_do_next(client, project):
    overview = client.get(reverse("project_overview", args=[project.pk])).content.decode()
    users = client.get(reverse("user_list", args=[project.pk])).content.decode()
    keys = client.get(reverse("key_list", args=[project.pk])).content.decode()

    assert "No spend yet" in overview and "curl -X POST" in overview and "create a budget" in overview
    assert "No users yet" in users
    assert "No keys yet" in keys


def test_no_projects_says_how_to_get_one(client_for, db):
    loner = User.objects.create_user("lee", password="pw")

    response = client_for(loner).get(reverse("project_list"))

    assert response.status_code == 200
    assert "not a member of any project" in response.content.decode()


@pytest.fixture
def ten_thousand_users(project):
    UserBudget.objects.bulk_create(
        [UserBudget(project=project, user_id=f"user-{n:05d}", total_budget=Decimal(10 + n % 50),
                    current_spend=Decimal(n % 97) / 10, duration="monthly") for n in range(10_000)],
        batch_size=1000,
    )
    return project


@pytest.mark.slow
@pytest.mark.parametrize("sort", ["-spend", "user", "-user", "budget", "used", "-used", "duration", "reset"])
def test_the_users_page_of_10000_users_takes_a_few_queries(client, ten_thousand_users, sort,
                                                            django_assert_max_num_queries):
    project = ten_thousand_users
    url = reverse("user_list", args=[project.pk])

    # Session, user, project, "any budget due?", count, page: the same six queries for 10 or 10,000 users.
    with django_assert_max_num_queries(8):
        response = client.get(url, {"sort": sort, "page": 3})

    assert response.status_code == 200
    assert response.content.decode().count('href="/projects/') >= 50
    assert "10,000" in response.content.decode()


def test_the_users_page_searches_and_sorts_in_the_database(client, ten_thousand_users,
                                                           django_assert_max_num_queries):
    project = ten_thousand_users
    with django_assert_max_num_queries(8):
        response = client.get(reverse("user_list", args=[project.pk]), {"q": "user-0999", "sort": "-user"})

    body = response.content.decode()
    assert response.status_code == 200
    rows = re.findall(r">(user-\d{5})</a>", body)
    assert rows == [f"user-0999{n}" for n in range(9, -1, -1)]


def test_users_are_sorted_by_utilisation(client, project, make_budget):
    for user, budget, spend in [("low", "100", "1"), ("high", "10", "9"), ("mid", "10", "5"), ("zero", "0", "0")]:
        make_budget(user, budget)
        UserBudget.objects.filter(user_id=user).update(current_spend=Decimal(spend))

    body = client.get(reverse("user_list", args=[project.pk]), {"sort": "-used"}).content.decode()

    assert re.findall(r'users/(\w+)">', body) == ["high", "mid", "low", "zero"]


@pytest.mark.slow
@pytest.mark.parametrize("page", ["overview", "models", "settings"])
def test_the_other_pages_render_with_10000_users(client, ten_thousand_users, page, django_assert_max_num_queries):
    with django_assert_max_num_queries(20):
        response = client.get(page_urls(ten_thousand_users)[page])

    assert response.status_code == 200


@pytest.mark.slow
def test_the_projects_page_counts_users_near_their_limit_in_one_query(client, ten_thousand_users,
                                                                      django_assert_max_num_queries):
    expected = sum(1 for b in UserBudget.objects.all() if b.total_budget > 0 and b.utilisation >= 80)

    with django_assert_max_num_queries(6):
        response = client.get(reverse("project_list"))

    assert response.status_code == 200
    assert f">{expected:,}</a>" in response.content.decode()


# --- budgets through the forms ------------------------------------------------------------------


def test_creating_a_budget_through_the_form(client, member, project):
    response = client.post(reverse("budget_create", args=[project.pk]),
                           {"user_id": "carol", "total_budget": "12.50", "duration": "weekly"})

    assert response.status_code == 302
    assert response["Location"] == reverse("user_detail", args=[project.pk, "carol"])
    budget = UserBudget.objects.get(project=project, user_id="carol")
    assert (budget.total_budget, budget.duration) == (Decimal("12.50"), "weekly")
    audit = AuditLog.objects.get(project=project, action="budget_create")
    assert audit.actor == "user:mia"


@pytest.mark.parametrize("data", [
    {"user_id": "carol", "total_budget": "-1", "duration": "monthly"},
    {"user_id": "carol", "total_budget": "abc", "duration": "monthly"},
    {"user_id": "carol", "total_budget": "NaN", "duration": "monthly"},
    {"user_id": "carol", "total_budget": "5", "duration": "fortnightly"},
    {"user_id": "carol", "total_budget": "5", "duration": "days"},
    {"user_id": "   ", "total_budget": "5", "duration": "monthly"},
    {"user_id": "x" * 256, "total_budget": "5", "duration": "monthly"},
])
def test_a_bad_budget_is_refused_with_400_and_writes_nothing(client, project, data):
    response = client.post(reverse("budget_create", args=[project.pk]), data)

    assert response.status_code == 400
    assert 'class="invalid-feedback' in response.content.decode() or "alert-danger" in response.content.decode()
    assert not UserBudget.objects.filter(project=project).exists()
    assert not AuditLog.objects.filter(project=project, action="budget_create").exists()


def test_editing_a_budget_keeps_its_spend(client, project, make_budget):
    make_budget("alice", "10")
    record(project, cost=Decimal("0.25"))

    response = client.post(reverse("budget_edit", args=[project.pk, "alice"]),
                           {"total_budget": "20", "duration": "days", "duration_days": "30"})

    assert response.status_code == 302
    budget = UserBudget.objects.get(project=project, user_id="alice")
    assert (budget.total_budget, budget.duration, budget.duration_days) == (Decimal(20), "days", 30)
    assert budget.current_spend == Decimal("0.25")
    assert AuditLog.objects.filter(budget=budget, action="budget_update", actor="user:mia").exists()


def test_a_bad_edit_shows_the_form_again_and_changes_nothing(client, project, make_budget):
    make_budget("alice", "10")

    response = client.post(reverse("budget_edit", args=[project.pk, "alice"]),
                           {"total_budget": "2000000", "duration": "monthly"})

    assert response.status_code == 400
    assert UserBudget.objects.get(project=project, user_id="alice").total_budget == Decimal(10)


def test_resetting_a_user_sets_spend_to_zero_and_keeps_the_ledger(client, project, make_budget):
    make_budget("alice")
    record(project)

    response = client.post(reverse("budget_reset", args=[project.pk, "alice"]))

    assert response.status_code == 302
    budget = UserBudget.objects.get(project=project, user_id="alice")
    assert budget.current_spend == 0
    assert not ModelSpend.objects.filter(budget=budget).exists()
    assert CostEvent.objects.filter(project=project, user_id="alice").count() == 1
    assert AuditLog.objects.filter(budget=budget, action="budget_reset_manual", actor="user:mia").exists()


def test_deleting_a_budget_keeps_its_ledger(client, project, make_budget):
    make_budget("alice")
    record(project)

    response = client.post(reverse("budget_delete", args=[project.pk, "alice"]))

    assert response.status_code == 302
    assert not UserBudget.objects.filter(project=project).exists()
    assert CostEvent.objects.filter(project=project, user_id="alice").count() == 1
    assert AuditLog.objects.filter(project=project, action="budget_delete", user_id="alice").exists()


def test_a_user_id_with_slashes_and_spaces_has_its_own_pages(client, project, make_budget):
    make_budget("team a/bob?x#1")
    url = reverse("user_detail", args=[project.pk, "team a/bob?x#1"])

    assert client.get(url).status_code == 200
    assert client.post(reverse("budget_reset", args=[project.pk, "team a/bob?x#1"])).status_code == 302


# --- keys -------------------------------------------------------------------------------------------


def test_a_new_key_is_shown_once_and_only_its_hash_is_stored(client, project):
    response = client.post(reverse("key_create", args=[project.pk]), {"name": "backend"})

    assert response.status_code == 201
    raw = re.search(r'id="new-key-value">(bm_[^<]+)<', response.content.decode()).group(1)
    key = ApiKey.objects.get(project=project)
    assert key.name == "backend" and raw not in (key.key_hash, key.prefix)
    assert services.api_key_authenticate(raw).pk == key.pk
    assert "no-cache" in response["Cache-Control"] or "no-store" in response["Cache-Control"]
    assert raw not in client.get(reverse("key_list", args=[project.pk])).content.decode()


def test_a_key_without_a_name_is_refused(client, project):
    response = client.post(reverse("key_create", args=[project.pk]), {"name": ""})

    assert response.status_code == 400
    assert not ApiKey.objects.exists()


def test_revoking_a_key(client, project):
    key, raw = services.api_key_create(project=project, name="old")

    response = client.post(reverse("key_revoke", args=[project.pk, key.pk]))

    assert response.status_code == 302
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert services.api_key_authenticate(raw) is None
    assert AuditLog.objects.filter(project=project, action="api_key_revoke").exists()


# --- settings ---------------------------------------------------------------------------------------


def test_saving_project_settings(client, project):
    response = client.post(reverse("project_settings_save", args=[project.pk]),
                           {"max_budget": "250.5", "timezone": "Europe/Paris"})

    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.max_budget, project.timezone) == (Decimal("250.5"), "Europe/Paris")
    assert AuditLog.objects.filter(project=project, action="project_update", actor="user:mia").exists()


def test_an_empty_cap_means_no_cap(client, project):
    services.project_update(project=project, actor="test", max_budget=Decimal(5))

    client.post(reverse("project_settings_save", args=[project.pk]), {"max_budget": "", "timezone": "UTC"})

    project.refresh_from_db()
    assert project.max_budget is None


def test_saving_alert_settings(client, project):
    response = client.post(reverse("alert_settings_save", args=[project.pk]), {
        "alert_thresholds": "100, 50%, 90", "alert_webhook_url": "https://hooks.example.com/budget",
        "alert_email": "ops@example.com"})

    assert response.status_code == 302
    project.refresh_from_db()
    assert project.alert_thresholds == [50, 90, 100]
    assert project.alert_webhook_url == "https://hooks.example.com/budget"
    assert project.alert_email == "ops@example.com"


@pytest.mark.parametrize("data", [
    {"alert_thresholds": "80, lots"}, {"alert_thresholds": "0"}, {"alert_thresholds": "5000"},
    {"alert_thresholds": "80", "alert_webhook_url": "not a url"}, {"alert_thresholds": "80", "alert_email": "nope"},
])
def test_bad_alert_settings_are_refused_and_change_nothing(client, project, data):
    response = client.post(reverse("alert_settings_save", args=[project.pk]), data)

    assert response.status_code == 400
    project.refresh_from_db()
    assert project.alert_thresholds == [80, 100]
    assert not AuditLog.objects.filter(project=project, action="project_update").exists()


def test_an_unknown_time_zone_is_refused(client, project):
    response = client.post(reverse("project_settings_save", args=[project.pk]),
                           {"max_budget": "", "timezone": "Mars/Olympus"})

    assert response.status_code == 400
    project.refresh_from_db()
    assert project.timezone == "UTC"


# --- charts and numbers -----------------------------------------------------------------------------


def test_the_overview_chart_has_the_ledgers_numbers_per_day_and_model(client, project, make_budget):
    make_budget("alice", "100")
    make_budget("bob", "100")
    record(project, "alice", "gpt-4o-mini", cost=Decimal("0.000150"))
    record(project, "alice", "gpt-4o", cost=Decimal("1.25"))
    record(project, "bob", "gpt-4o", cost=Decimal(2))

    response = client.get(reverse("project_overview", args=[project.pk]), {"days": "7"})

    assert response.status_code == 200
    spec = chart_spec(response, "spend-chart")
    assert len(spec["x"]) == 7
    by_model = {s["name"]: s for s in spec["series"]}
    assert set(by_model) == {"gpt-4o", "gpt-4o-mini"}
    assert Decimal(by_model["gpt-4o"]["y"][-1]) == Decimal("3.25")
    assert by_model["gpt-4o-mini"]["labels"][-1] == "$0.000150"
    users = chart_spec(response, "users-chart")
    assert users["x"] == ["bob", "alice"]
    assert [Decimal(v) for v in users["series"][0]["y"]] == [Decimal(2), Decimal("1.250150")]
    body = response.content.decode()
    assert "$3.25" in body and "$0.000150" in body


def test_days_are_the_projects_local_days(client, project, make_budget):
    services.project_update(project=project, actor="test", timezone="America/New_York")
    make_budget("alice")
    event = record(project, cost=Decimal(1)).event
    # 03:00 UTC on 10 January is still 9 January in New York.
    CostEvent.objects.filter(pk=event.pk).update(created_at=datetime(2026, 1, 10, 3, 0, tzinfo=UTC))
    services.rollups_rebuild(project)  # the ledger was edited behind the services' back

    response = client.get(reverse("project_overview", args=[project.pk]),
                          {"start": "2026-01-08", "end": "2026-01-11"})

    spec = chart_spec(response, "spend-chart")
    assert spec["x"] == ["2026-01-08", "2026-01-09", "2026-01-10", "2026-01-11"]
    assert [Decimal(v) for v in spec["series"][0]["y"]] == [0, 1, 0, 0]


def test_the_user_page_has_spend_models_periods_and_ledger(client, project, make_budget):
    budget = make_budget("alice", "10", "daily")
    record(project, model="gpt-4o", cost=Decimal("0.5"))
    record(project, model="gpt-4o-mini", cost=Decimal("0.25"))
    budget.refresh_from_db()
    budget.periods.create(project=project, user_id="alice", period_start=datetime(2026, 1, 1, tzinfo=UTC),
                          period_end=datetime(2026, 1, 2, tzinfo=UTC), spend=Decimal("3.5"),
                          total_budget=Decimal(10))

    response = client.get(reverse("user_detail", args=[project.pk, "alice"]))

    assert response.status_code == 200
    models = chart_spec(response, "user-models-chart")
    assert models["x"] == ["gpt-4o", "gpt-4o-mini"]
    periods = chart_spec(response, "periods-chart")
    assert periods["x"] == ["2026-01-01"] and periods["series"][0]["y"] == ["3.500000000000"]
    assert chart_spec(response, "user-spend-chart")["series"]
    body = response.content.decode()
    assert body.count("<tr><td class=\"text-nowrap\">") >= 2  # ledger rows


def test_the_user_page_never_shows_less_than_nothing_left(client, project, make_budget):
    make_budget("alice", "1", "monthly")
    record(project, model="gpt-4o", cost=Decimal("1.539"))

    response = client.get(reverse("user_detail", args=[project.pk, "alice"]))

    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="user-left">$0.00 left' in body  # as the API's remaining: never below 0
    assert "over by $0.539" in body
    assert "-$" not in body


def test_the_models_page_shows_tokens_prices_and_links_staff_to_the_price(client_for, project, make_budget):
    make_budget("alice", "100")
    record(project, model="gpt-4o-mini", prompt=1_000_000, completion=0)
    staff = User.objects.create_user("sam", password="pw", is_staff=True)

    member_page = client_for().get(reverse("model_list", args=[project.pk])).content.decode()
    staff_page = client_for(staff).get(reverse("model_list", args=[project.pk])).content.decode()

    assert "1,000,000" in member_page and "$0.15" in member_page  # $0.15 per million input tokens
    assert "/admin/budgets/modelprice/" not in member_page
    assert "/admin/budgets/modelprice/" in staff_page


def test_the_forecast_extrapolates_the_burn_rate_to_the_period_end(project):
    project.duration = "monthly"
    project.period_start = datetime(2026, 3, 1, tzinfo=UTC)
    project.next_reset_at = datetime(2026, 4, 1, tzinfo=UTC)
    project.current_spend = Decimal(10)
    project.max_budget = Decimal(40)

    result = forecast(project, at=datetime(2026, 3, 11, tzinfo=UTC))  # 10 days in, 21 to go

    assert result.per_day == Decimal(1)
    assert result.projected == Decimal(31)
    assert result.cap_reached_at is None  # $40 is not reached before 1 April


def test_a_date_range_covers_whole_local_days():
    from zoneinfo import ZoneInfo

    rng = DateRange.last_days(7, ZoneInfo("Asia/Tokyo"), at=datetime(2026, 5, 10, 20, 0, tzinfo=UTC))

    assert (rng.start.isoformat(), rng.end.isoformat()) == ("2026-05-05", "2026-05-11")
    assert rng.since == datetime(2026, 5, 4, 15, 0, tzinfo=UTC)
    assert len(rng.days) == 7


@pytest.mark.parametrize(("amount", "text"), [
    ("0", "$0.00"), ("0.000150", "$0.000150"), ("0.00000012345", "$0.000000123"), ("0.0123", "$0.0123"),
    ("0.5", "$0.500"), ("1234.567", "$1,234.57"), ("3.25", "$3.25"), (None, "—"),
])
def test_dollars_are_shown_with_readable_precision(amount, text):
    assert format_dollars(None if amount is None else Decimal(amount)) == text


# --- export -------------------------------------------------------------------------------------


def test_the_export_streams_the_filtered_ledger_as_csv(client, project, make_budget):
    services.project_update(project=project, actor="test", timezone="Europe/Paris")
    make_budget("alice")
    make_budget("bob")
    record(project, "alice", "gpt-4o", cost=Decimal("0.000150"))
    record(project, "bob", "gpt-4o-mini", cost=Decimal(1))
    record(project, "alice", "gpt-4o-mini", cost=Decimal(2))

    response = client.get(reverse("export_csv", args=[project.pk]), {"user": "alice"})

    assert response.status_code == 200
    assert isinstance(response, StreamingHttpResponse)
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert rows[0][:3] == ["time", "user", "model"]
    assert [(r[1], r[2], Decimal(r[7])) for r in rows[1:]] == [
        ("alice", "gpt-4o", Decimal("0.000150")), ("alice", "gpt-4o-mini", Decimal(2))]
    assert rows[1][0].endswith(("+01:00", "+02:00"))  # Paris time


def test_the_export_filters_by_model_and_range(client, project, make_budget):
    make_budget("alice")
    old = record(project, model="gpt-4o", cost=Decimal(1)).event
    CostEvent.objects.filter(pk=old.pk).update(created_at=datetime(2020, 1, 1, tzinfo=UTC))
    record(project, model="gpt-4o", cost=Decimal(2))
    record(project, model="gpt-4o-mini", cost=Decimal(3))

    response = client.get(reverse("export_csv", args=[project.pk]), {"model": "gpt-4o", "days": "7"})

    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert [Decimal(r[7]) for r in rows[1:]] == [Decimal(2)]


# --- admin ------------------------------------------------------------------------------------------


def test_admin_links_a_budget_to_its_console_page(client_for, project, make_budget):
    make_budget("alice")
    admin_user = User.objects.create_superuser("root", password="pw")

    response = client_for(admin_user).get(reverse("admin:budgets_userbudget_changelist"))

    assert response.status_code == 200
    assert f'href="{reverse("user_detail", args=[project.pk, "alice"])}"' in response.content.decode()


# --- the empty states' examples work ----------------------------------------------------------------


def _curl(body: str, method: str) -> tuple[str, str]:
    command = html.unescape(re.search(rf"<code>(curl -X {method} .*?)</code>", body, re.DOTALL).group(1))
    url = re.search(rf"curl -X {method} (\S+)", command).group(1)
    return urlsplit(url).path, re.search(r"-d '(.*?)'", command).group(1)


def test_the_curl_examples_of_the_empty_states_work(client, project):
    _, raw = services.api_key_create(project=project, name="k")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {raw}")

    path, data = _curl(client.get(reverse("user_list", args=[project.pk])).content.decode(), "PUT")
    created = api.put(path, data, content_type="application/json")
    path, data = _curl(client.get(reverse("project_overview", args=[project.pk])).content.decode(), "POST")
    recorded = api.post(path, data, content_type="application/json")

    assert (created.status_code, recorded.status_code) == (201, 201)
    assert UserBudget.objects.get(project=project, user_id="alice").current_spend > 0
    assert CostEvent.objects.filter(project=project, user_id="alice").count() == 1


@pytest.mark.parametrize("start", ["=", "+", "-", "@"])
def test_the_export_neutralises_formulas_in_user_ids_and_model_names(client, project, make_budget, start):
    user_id, model = f"{start}HYPERLINK(\"https://evil.example\")", f"{start}cmd|' /C calc'!A0"
    make_budget(user_id)
    record(project, user_id, model, cost=Decimal("1.5"))

    response = client.get(reverse("export_csv", args=[project.pk]))

    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode(), newline="")))
    assert rows[1][1:3] == [f"'{user_id}", f"'{model}"]
    assert rows[1][3:5] == ["1000", "200"] and Decimal(rows[1][7]) == Decimal("1.5")  # numbers stay numbers
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in rows[1])


@pytest.mark.parametrize("text", ["\tcmd", "\rcmd", "=1+2", "+1", "-1", "@SUM(A1)"])
def test_a_csv_text_cell_starting_like_a_formula_gets_a_quote(text):
    assert csv_text(text) == f"'{text}"


def test_the_export_leaves_ordinary_names_alone(client, project, make_budget):
    make_budget("alice=bob")
    record(project, "alice=bob", "gpt-4o-mini", cost=Decimal(1))

    response = client.get(reverse("export_csv", args=[project.pk]))

    rows = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode(), newline="")))
    assert rows[1][1:3] == ["alice=bob", "gpt-4o-mini"]


@pytest.mark.postgres
def test_a_big_export_goes_out_in_blocks_not_a_write_per_row(client, project, make_budget, monkeypatch):
    """COPY hands over a row at a time; the response gathers them into blocks of EXPORT_BLOCK bytes."""
    from budgets.selectors import console

    monkeypatch.setattr(console, "EXPORT_BLOCK", 1024)
    make_budget("alice", total_budget="1000")
    for _ in range(60):
        services.cost_record(project=project, user_id="alice", usage=Usage("gpt-4o", 10, 5), cost=Decimal("0.01"),
                             source="api")
    chunks = list(console.export_csv_chunks(project))
    text = b"".join(chunks).decode()
    assert text.count("\n") == 61  # the header and 60 rows, each whole
    assert len(chunks) < 20
    assert all(len(chunk) >= 1024 for chunk in chunks[:-1])
