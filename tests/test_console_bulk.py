"""Many budgets at once: the users list's bulk set/reset, and the CSV import with its preview."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from budgets import services
from budgets.domain.usage import Usage
from budgets.models import AuditLog, UserBudget

pytestmark = pytest.mark.django_db

User = get_user_model()


@pytest.fixture
def manager(db):
    return User.objects.create_user("max")


@pytest.fixture
def team(manager):
    project = services.project_create(name="acme", actor="test")
    services.member_add(project=project, user=manager, role="manager", actor="test")
    for user_id in ("alice", "bob", "carol"):
        services.budget_set(project=project, user_id=user_id, total_budget=Decimal(10), duration="monthly",
                            actor="test")
        services.cost_record(project=project, user_id=user_id, usage=Usage("gpt-4o-mini", 10000, 1000), source="api")
    return project


@pytest.fixture
def client(manager):
    client = Client()
    client.force_login(manager)
    return client


def budgets(project):
    return dict(UserBudget.objects.filter(project=project).values_list("user_id", "total_budget"))


def test_the_users_list_has_a_checkbox_per_user_for_managers(client, team):
    page = client.get(reverse("user_list", args=[team.pk])).content.decode()

    assert page.count('name="user_ids"') == 3 and 'id="bulk-form"' in page


def test_setting_one_budget_for_the_selected_users(client, team):
    response = client.post(reverse("budget_bulk", args=[team.pk]), {
        "op": "set", "user_ids": ["alice", "bob"], "total_budget": "25", "duration": "weekly", "next": "?sort=-spend"})

    assert response.status_code == 302
    assert response["Location"] == reverse("user_list", args=[team.pk]) + "?sort=-spend"
    assert budgets(team) == {"alice": Decimal(25), "bob": Decimal(25), "carol": Decimal(10)}
    assert UserBudget.objects.get(project=team, user_id="alice").duration == "weekly"
    audits = AuditLog.objects.filter(project=team, action="budget_update", actor="user:max")
    assert sorted(audits.values_list("user_id", flat=True)) == ["alice", "bob"]


def test_resetting_the_selected_users_together(client, team):
    response = client.post(reverse("budget_bulk", args=[team.pk]), {"op": "reset", "user_ids": ["alice", "carol"]})

    assert response.status_code == 302
    spend = dict(UserBudget.objects.filter(project=team).values_list("user_id", "current_spend"))
    assert spend["alice"] == spend["carol"] == 0 and spend["bob"] > 0
    assert AuditLog.objects.filter(project=team, action="budget_reset_manual", actor="user:max").count() == 2


def test_a_bulk_reset_with_an_unknown_user_changes_nobody(client, team):
    before = AuditLog.objects.count()

    client.post(reverse("budget_bulk", args=[team.pk]), {"op": "reset", "user_ids": ["alice", "ghost"]})

    assert UserBudget.objects.get(project=team, user_id="alice").current_spend > 0
    assert AuditLog.objects.count() == before


def test_a_bulk_set_without_an_amount_or_users_changes_nothing(client, team):
    before = AuditLog.objects.count()

    client.post(reverse("budget_bulk", args=[team.pk]), {"op": "set", "user_ids": ["alice"], "duration": "daily"})
    client.post(reverse("budget_bulk", args=[team.pk]), {"op": "set", "total_budget": "3", "duration": "daily"})

    assert budgets(team)["alice"] == Decimal(10)
    assert AuditLog.objects.count() == before


def upload(client, team, text: str, **extra):
    return client.post(reverse("budget_import", args=[team.pk]),
                       {"file": SimpleUploadedFile("budgets.csv", text.encode(), "text/csv"), **extra})


CSV = "user_id,total_budget,duration\nalice,10,monthly\nbob,40,monthly\ndave,5,daily\n"


def test_the_import_preview_lists_each_rows_change_and_writes_nothing(client, team):
    before = AuditLog.objects.count()

    response = upload(client, team, CSV)

    assert response.status_code == 200
    changes = {r["row"].user_id: r["change"] for r in response.context["rows"]}
    assert changes == {"alice": "unchanged", "bob": "changed", "dave": "new"}
    page = response.content.decode()
    assert "$10.00, monthly → $40.00, monthly" in page
    assert budgets(team) == {"alice": Decimal(10), "bob": Decimal(10), "carol": Decimal(10)}
    assert AuditLog.objects.count() == before


@pytest.mark.parametrize("bad_line, error", [
    ("erin,-5,monthly", "non-negative"), ("erin,ten,monthly", "non-negative number"),
    ("erin,5,fortnightly", "duration must be one of"), ("erin,5", "expected 3 columns"), ("bob,7,daily", "twice")])
def test_one_bad_row_shows_its_error_and_nothing_can_be_applied(client, team, bad_line, error):
    text = CSV + bad_line + "\n"

    preview = upload(client, team, text)
    forced = client.post(reverse("budget_import", args=[team.pk]), {"text": text, "confirm": "yes"})

    assert preview.status_code == forced.status_code == 400
    assert error in preview.content.decode()
    assert "import-confirm-form" not in preview.content.decode()
    assert budgets(team) == {"alice": Decimal(10), "bob": Decimal(10), "carol": Decimal(10)}


def test_confirming_applies_every_change_audited_like_a_single_edit(client, team):
    preview = upload(client, team, CSV)
    text = preview.context["text"]

    response = client.post(reverse("budget_import", args=[team.pk]), {"text": text, "confirm": "yes"})

    assert response.status_code == 302
    assert budgets(team) == {"alice": Decimal(10), "bob": Decimal(40), "carol": Decimal(10), "dave": Decimal(5)}
    assert UserBudget.objects.get(project=team, user_id="dave").duration == "daily"
    audits = list(AuditLog.objects.filter(project=team, actor="user:max").values_list("action", "user_id"))
    assert sorted(audits) == [("budget_create", "dave"), ("budget_update", "bob")]  # alice was unchanged


def test_a_viewer_cannot_preview_or_import(team):
    viewer = User.objects.create_user("vera")
    services.member_add(project=team, user=viewer, role="viewer", actor="test")
    client = Client()
    client.force_login(viewer)

    assert client.get(reverse("budget_import", args=[team.pk])).status_code == 403
    assert upload(client, team, CSV).status_code == 403
    page = client.get(reverse("user_list", args=[team.pk])).content.decode()
    assert "user_ids" not in page and "Import CSV" not in page


# --- the import refuses in the preview what the apply would refuse ---------------------------------


def test_a_nul_byte_in_an_imported_id_is_a_row_error_and_writes_nothing(client, team):
    before = AuditLog.objects.count()

    preview = upload(client, team, "nu\x00l,5,monthly\n")
    forced = client.post(reverse("budget_import", args=[team.pk]), {"text": "nu\x00l,5,monthly\n", "confirm": "yes"})

    assert preview.status_code == forced.status_code == 400
    assert [r["change"] for r in preview.context["rows"]] == ["error"]
    assert "control characters" in preview.content.decode()
    assert "import-confirm-form" not in preview.content.decode()
    assert budgets(team) == {"alice": Decimal(10), "bob": Decimal(10), "carol": Decimal(10)}
    assert AuditLog.objects.count() == before


@pytest.mark.parametrize("user_id, error", [
    ("../x", "path segments"), ("a\x07b", "control characters"), ("tab\there", "control characters"),
    ("x" * 256, "at most 255"), ("a/./b", "path segments")])
def test_the_preview_refuses_every_id_the_apply_refuses(client, team, user_id, error):
    text = f"{user_id},5,monthly\n"

    preview = upload(client, team, text)
    forced = client.post(reverse("budget_import", args=[team.pk]), {"text": text, "confirm": "yes"})

    assert preview.status_code == forced.status_code == 400
    assert [r["change"] for r in preview.context["rows"]] == ["error"]
    assert error in preview.context["rows"][0]["row"].error
    assert not UserBudget.objects.filter(project=team).exclude(user_id__in=["alice", "bob", "carol"]).exists()


def test_the_apply_imports_exactly_the_ids_the_preview_showed_leading_space_included(client, team):
    preview = upload(client, team, " alice,5,monthly\n")
    assert [(r["row"].user_id, r["change"]) for r in preview.context["rows"]] == [(" alice", "new")]
    assert '<textarea name="text" hidden>\n alice,5,monthly\n</textarea>' in preview.content.decode()

    response = client.post(reverse("budget_import", args=[team.pk]), {"text": preview.context["text"],
                                                                        "confirm": "yes"})

    assert response.status_code == 302
    assert budgets(team) == {" alice": Decimal(5), "alice": Decimal(10), "bob": Decimal(10), "carol": Decimal(10)}


def test_a_field_longer_than_the_csv_reader_takes_is_a_form_error(client, team):
    response = upload(client, team, "a" * 200_000 + ",5,monthly\n")

    assert response.status_code == 400
    assert "too long" in response.content.decode()
    assert budgets(team) == {"alice": Decimal(10), "bob": Decimal(10), "carol": Decimal(10)}


# --- bulk "Set budget" keeps each user's period unless one is chosen --------------------------------


@pytest.fixture
def mixed_periods(team):
    """bob resets weekly and carol daily; alice stays monthly."""
    for user_id, duration in (("bob", "weekly"), ("carol", "daily")):
        services.budget_set(project=team, user_id=user_id, total_budget=Decimal(10), duration=duration, actor="test")
    return team


def periods(project):
    return dict(UserBudget.objects.filter(project=project).values_list("user_id", "duration"))


def test_the_bulk_period_select_defaults_to_keeping_each_users_period(client, team):
    page = client.get(reverse("user_list", args=[team.pk])).content.decode()
    bulk_select = page.split('id="bulk-duration"', 1)[1].split("</select>", 1)[0]

    assert '<option value="keep" selected>Keep each user’s period</option>' in bulk_select
    assert bulk_select.count(" selected") == 1


@pytest.mark.parametrize("sent", [{"duration": "keep"}, {}], ids=["keep chosen", "no period sent"])
def test_a_bulk_set_that_keeps_periods_changes_only_the_amounts(client, mixed_periods, sent):
    team = mixed_periods

    response = client.post(reverse("budget_bulk", args=[team.pk]),
                           {"op": "set", "user_ids": ["bob", "carol"], "total_budget": "25", **sent}, follow=True)

    assert response.status_code == 200
    assert budgets(team) == {"alice": Decimal(10), "bob": Decimal(25), "carol": Decimal(25)}
    assert periods(team) == {"alice": "monthly", "bob": "weekly", "carol": "daily"}
    audits = AuditLog.objects.filter(project=team, action="budget_update", actor="user:max")
    assert {(a.user_id, a.before["duration"], a.after["duration"]) for a in audits} == {
        ("bob", "weekly", "weekly"), ("carol", "daily", "daily")}
    assert "Set the budget of 2 users to $25.00; each keeps its reset period." in response.content.decode()


def test_a_bulk_set_with_a_chosen_period_says_it_changes_the_period_too(client, mixed_periods):
    team = mixed_periods

    response = client.post(reverse("budget_bulk", args=[team.pk]),
                           {"op": "set", "user_ids": ["bob", "carol"], "total_budget": "25", "duration": "yearly"},
                           follow=True)

    assert response.status_code == 200
    assert periods(team) == {"alice": "monthly", "bob": "yearly", "carol": "yearly"}
    assert "Set the budget of 2 users to $25.00, reset yearly." in response.content.decode()


def test_keeping_periods_for_a_user_without_a_budget_changes_nobody(client, mixed_periods):
    team = mixed_periods
    before = AuditLog.objects.count()

    response = client.post(reverse("budget_bulk", args=[team.pk]),
                           {"op": "set", "user_ids": ["bob", "ghost"], "total_budget": "25"}, follow=True)

    assert response.status_code == 200
    assert "Nothing was changed" in response.content.decode()
    assert budgets(team) == {"alice": Decimal(10), "bob": Decimal(10), "carol": Decimal(10)}
    assert AuditLog.objects.count() == before


def test_the_set_button_carries_the_confirmation_that_names_the_change(client, team):
    page = client.get(reverse("user_list", args=[team.pk])).content.decode()

    assert 'data-confirm-keep="Set the budget of {count} to {amount}; each keeps its reset period."' in page
    assert 'data-confirm-period="Set the budget of {count} to {amount}; their reset period becomes: {period}."' in page
    assert '<script src="/static/console/bulk.js"></script>' in page


# --- a big import: set-based, listed in part, audited exactly like single edits ---------------------


def confirm(client, team, text: str):
    return client.post(reverse("budget_import", args=[team.pk]), {"text": text, "confirm": "yes"})


def import_csv(prefix: str, size: int) -> str:
    """`size` rows for users `prefix`0..: new, unchanged, changed amount, changed period, in turn."""
    lines = []
    for i in range(size):
        amount, duration = ((10, "monthly"), (10, "monthly"), (12, "monthly"), (10, "weekly"))[i % 4]
        lines.append(f"{prefix}{i},{amount},{duration}")
    return "\n".join(lines) + "\n"


@pytest.mark.postgres
def test_an_import_makes_as_many_statements_for_200_rows_as_for_10(client, team):
    """The preview and the apply are set-based: one read, one insert, one update, one audit COPY, whatever N."""
    counts = {}
    for size in (10, 200):
        prefix = f"n{size}-"
        for i in range(size):  # every row but the first of each four has a budget already
            if i % 4:
                services.budget_set(project=team, user_id=f"{prefix}{i}", total_budget=Decimal(10),
                                    duration="monthly", actor="test")
        text = import_csv(prefix, size)
        with CaptureQueriesContext(connection) as previewed:
            assert upload(client, team, text).status_code == 200
        with CaptureQueriesContext(connection) as applied:
            assert confirm(client, team, text).status_code == 302
        counts[size] = (len(previewed), len(applied))
        changed = AuditLog.objects.filter(project=team, actor="user:max", user_id__startswith=prefix)
        assert changed.count() == size - len(range(1, size, 4))  # the unchanged rows are not written
    assert counts[10] == counts[200], counts


def test_the_preview_lists_every_error_and_the_first_changes_and_the_apply_applies_them_all(client, team):
    text = import_csv("big", 260)  # nobody has a budget yet: 260 new rows
    preview = upload(client, team, text)

    page = preview.content.decode()
    assert preview.status_code == 200 and len(preview.context["rows"]) == 260
    assert page.count('data-change="new"') == 200
    assert "The first 200 changes are listed; 60 more will be applied too." in page
    assert confirm(client, team, preview.context["text"]).status_code == 302
    assert UserBudget.objects.filter(project=team, user_id__startswith="big").count() == 260

    bad = text + "".join(f"bad{i},-1,monthly\n" for i in range(3)) + "big7,5,daily\n"
    preview = upload(client, team, bad)
    page = preview.content.decode()
    assert preview.status_code == 400
    assert page.count('data-change="error"') == 4 and 'data-change="changed"' not in page
    assert "4 rows have an error" in page and "import-confirm-form" not in page


def test_a_row_for_a_budget_whose_period_ended_is_reset_first_like_a_single_edit(client, manager, team, time_machine):
    time_machine.move_to(UserBudget.objects.get(project=team, user_id="alice").next_reset_at, tick=False)
    client.force_login(manager)  # a month later: the session would have expired

    response = confirm(client, team, "alice,30,monthly\n")

    assert response.status_code == 302
    actions = list(AuditLog.objects.filter(project=team, user_id="alice").order_by("id").values_list("action", "actor"))
    assert actions[-2:] == [("budget_period_reset", "system:lazy-reset"), ("budget_update", "user:max")]
    update = AuditLog.objects.filter(project=team, user_id="alice", action="budget_update").latest("id")
    assert Decimal(update.before["current_spend"]) == Decimal(update.after["current_spend"]) == 0


def test_an_import_writes_the_audit_rows_a_budget_set_per_row_writes(manager, time_machine):
    """New, unchanged, changed amount, changed period (to a calendar one and to none), a period that ended:
    the import's budgets and audit rows are those of budget_set called row by row, field for field."""
    time_machine.move_to("2026-03-10 15:30:00+00:00", tick=False)
    projects = []
    for name in ("by-import", "one-by-one"):
        project = services.project_create(name=name, timezone="America/New_York", actor="test")
        services.member_add(project=project, user=manager, role="manager", actor="test")
        for user_id, duration in (("same", "monthly"), ("amount", "monthly"), ("period", "monthly"),
                                  ("never", "weekly"), ("daily", "daily")):
            services.budget_set(project=project, user_id=user_id, total_budget=Decimal("7.25"), duration=duration,
                                actor="test")
            services.cost_record(project=project, user_id=user_id, usage=Usage("gpt-4o-mini", 10000, 1000),
                                 source="api")
        projects.append(project)
    time_machine.move_to("2026-03-12 09:00:00+00:00", tick=False)  # "daily" is due: a lazy reset comes first
    rows = [("fresh", "3", "monthly"), ("fresh-none", "4.5", "none"), ("same", "7.25", "monthly"),
            ("amount", "8", "monthly"), ("period", "7.25", "weekly"), ("never", "9", "none"), ("daily", "1", "daily")]
    client = Client()
    client.force_login(manager)
    text = "".join(f"{u},{a},{d}\n" for u, a, d in rows)
    assert confirm(client, projects[0], text).status_code == 302
    for user_id, amount, duration in rows:
        if user_id != "same":  # the import leaves an unchanged row alone
            services.budget_set(project=projects[1], user_id=user_id, total_budget=Decimal(amount), duration=duration,
                                actor="user:max")

    def state(project):
        budgets = {b.user_id: (b.total_budget, b.duration, b.period_start, b.next_reset_at, b.current_spend,
                               b.updated_at) for b in UserBudget.objects.filter(project=project)}
        audits = sorted((a.user_id, a.action, a.actor, a.before, a.after)
                        for a in AuditLog.objects.filter(project=project, created_at__gte=timezone.now()))
        return budgets, audits

    by_import, one_by_one = state(projects[0]), state(projects[1])
    assert by_import[0] == one_by_one[0]
    assert by_import[1] == one_by_one[1]
    assert [a[:2] for a in by_import[1] if a[2] == "user:max"] == [
        ("amount", "budget_update"), ("daily", "budget_update"), ("fresh", "budget_create"),
        ("fresh-none", "budget_create"), ("never", "budget_update"), ("period", "budget_update")]
