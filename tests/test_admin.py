"""Django admin for support staff: lists render, actions go through the services."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.urls import reverse

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, CostEvent, ModelPrice, Project, UserBudget
from budgets.templatetags.console import format_dollars

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("support", "support@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def spent(project, make_budget):
    budget = make_budget("alice", total_budget="10", duration="monthly")
    services.cost_record(project=project, user_id="alice", usage=Usage("gpt-4o", 1000, 100), source="api")
    budget.refresh_from_db()
    return budget


@pytest.mark.parametrize("model", ["project", "userbudget", "costevent", "budgetperiod", "modelprice", "apikey",
                                   "auditlog", "alert"])
def test_every_changelist_renders_and_searches(staff_client, spent, model):
    url = reverse(f"admin:budgets_{model}_changelist")

    assert staff_client.get(url).status_code == 200
    assert staff_client.get(url, {"q": "alice"}).status_code == 200


def test_the_budget_list_shows_spend_and_utilisation(staff_client, spent):
    page = staff_client.get(reverse("admin:budgets_userbudget_changelist")).content.decode()

    assert "alice" in page
    assert f"{spent.utilisation:.1f}%" in page


def test_reset_selected_budgets_calls_the_reset_service(staff_client, spent):
    response = staff_client.post(reverse("admin:budgets_userbudget_changelist"),
                                 {"action": "reset_selected", "_selected_action": [spent.pk]})

    assert response.status_code == 302
    spent.refresh_from_db()
    assert spent.current_spend == 0
    assert AuditLog.objects.get(action="budget_reset_manual").actor == "admin:support"
    assert CostEvent.objects.count() == 1


def test_editing_a_budget_in_admin_is_audited(staff_client, spent):
    url = reverse("admin:budgets_userbudget_change", args=[spent.pk])

    response = staff_client.post(url, {"total_budget": "20", "duration": "monthly", "duration_days": "",
                                       "model_spends-TOTAL_FORMS": "1", "model_spends-INITIAL_FORMS": "1",
                                       "model_spends-MIN_NUM_FORMS": "0", "model_spends-MAX_NUM_FORMS": "1000",
                                       "model_spends-0-id": spent.model_spends.get().pk,
                                       "model_spends-0-budget": spent.pk})

    assert response.status_code == 302, response.content.decode()[:2000]
    spent.refresh_from_db()
    assert spent.total_budget == Decimal(20)
    assert spent.current_spend > 0
    assert AuditLog.objects.filter(action="budget_update", actor="admin:support").count() == 1


def test_the_ledger_is_read_only(staff_client, spent):
    event = CostEvent.objects.get()
    url = reverse("admin:budgets_costevent_change", args=[event.pk])

    assert staff_client.post(url, {"cost": "0"}).status_code == 403
    assert staff_client.get(reverse("admin:budgets_costevent_add")).status_code == 403
    event.refresh_from_db()
    assert event.cost > 0


def test_revoke_selected_keys_calls_the_revoke_service(staff_client, project):
    key, raw = services.api_key_create(project=project, name="ci")

    staff_client.post(reverse("admin:budgets_apikey_changelist"),
                      {"action": "revoke_selected", "_selected_action": [key.pk]})

    key.refresh_from_db()
    assert key.revoked_at is not None
    assert services.api_key_authenticate(raw) is None
    assert AuditLog.objects.filter(action="api_key_revoke").count() == 1


def test_a_price_edited_in_admin_is_marked_and_survives_a_reload(staff_client):
    price = ModelPrice.objects.get(model="gpt-4o")
    url = reverse("admin:budgets_modelprice_change", args=[price.pk])
    data = {"model": "gpt-4o", "provider": "openai", "mode": "chat", "input_cost_per_token": "0.000003",
            "output_cost_per_token": "0.00001", "cache_read_input_token_cost": "",
            "cache_creation_input_token_cost": "",
            "max_tokens": "", "max_input_tokens": "", "max_output_tokens": ""}

    assert staff_client.post(url, data).status_code == 302
    from budgets.domain.pricing import get_price
    from budgets.services.prices import load_price_map

    load_price_map()
    price.refresh_from_db()
    assert (price.source, price.input_cost_per_token) == ("admin", Decimal("0.000003"))
    assert get_price("gpt-4o").input == Decimal("0.000003")
    assert UserBudget.objects.count() == 0


def _project_form(**overrides):
    form = {"name": "admin-made", "max_budget": "50", "duration": "monthly", "timezone": "Europe/Berlin",
            "alert_thresholds": "[80, 100]", "alert_webhook_url": "", "alert_email": "",
            # The members inline (read-only: members change on the console's Members page).
            "memberships-TOTAL_FORMS": "0", "memberships-INITIAL_FORMS": "0"}
    form.update(overrides)
    return form


def test_a_project_created_in_the_admin_is_set_up_like_create_project(staff_client):
    response = staff_client.post(reverse("admin:budgets_project_add"), _project_form())

    assert response.status_code == 302, response.content.decode()[:2000]
    made = Project.objects.get(name="admin-made")
    twin = services.project_create(name="twin", max_budget="50", timezone="Europe/Berlin", duration="monthly")
    assert made.next_reset_at is not None
    assert (made.period_start, made.next_reset_at) == (twin.period_start, twin.next_reset_at)
    assert made.max_budget == Decimal(50)
    audit = AuditLog.objects.get(project=made)
    assert (audit.action, audit.actor) == ("project_create", "admin:support")


def test_changing_a_project_in_the_admin_goes_through_the_service(staff_client):
    project = services.project_create(name="admin-made", max_budget="50")
    url = reverse("admin:budgets_project_change", args=[project.pk])

    response = staff_client.post(url, _project_form(max_budget="75", duration="daily", timezone="UTC"))

    assert response.status_code == 302, response.content.decode()[:2000]
    project.refresh_from_db()
    assert (project.max_budget, project.duration) == (Decimal(75), "daily")
    assert project.next_reset_at is not None
    update = AuditLog.objects.get(project=project, action="project_update")
    assert (update.actor, update.after["max_budget"]) == ("admin:support", "75")


def test_money_is_shown_in_the_consoles_format_not_with_twelve_places(staff_client, project, spent):
    event = CostEvent.objects.get(project=project)
    Project.objects.filter(pk=project.pk).update(max_budget=Decimal(1))
    pages = {
        "budgets": staff_client.get(reverse("admin:budgets_userbudget_changelist")),
        "budget": staff_client.get(reverse("admin:budgets_userbudget_change", args=[spent.pk])),
        "projects": staff_client.get(reverse("admin:budgets_project_changelist")),
        "project": staff_client.get(reverse("admin:budgets_project_change", args=[project.pk])),
        "ledger": staff_client.get(reverse("admin:budgets_costevent_changelist")),
        "event": staff_client.get(reverse("admin:budgets_costevent_change", args=[event.pk])),
    }

    for name, response in pages.items():
        assert response.status_code == 200, name
        assert not re.search(r"\d\.\d{12}\b", response.content.decode()), name
    assert "$10.00" in pages["budgets"].content.decode()  # the budget
    assert format_dollars(spent.current_spend) in pages["budget"].content.decode()  # read-only spend
    assert 'name="total_budget" value="10"' in pages["budget"].content.decode()  # the exact amount to edit
    assert "$1.00" in pages["projects"].content.decode()
    assert 'name="max_budget" value="1"' in pages["project"].content.decode()
    assert format_dollars(event.cost) in pages["event"].content.decode()


def test_an_amount_edited_in_the_admin_is_kept_exactly(staff_client, spent):
    url = reverse("admin:budgets_userbudget_change", args=[spent.pk])

    response = staff_client.post(url, {"total_budget": "12.345678901234", "duration": "monthly",
                                       "model_spends-TOTAL_FORMS": "0", "model_spends-INITIAL_FORMS": "0"})

    assert response.status_code == 302, response.content.decode()[:2000]
    spent.refresh_from_db()
    assert spent.total_budget == Decimal("12.345678901234")
