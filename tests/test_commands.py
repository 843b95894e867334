"""Management commands of the core: create_project."""

from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from budgets import services
from budgets.models import ApiKey, AuditLog, Project

pytestmark = pytest.mark.django_db


def test_create_project_prints_a_working_key_as_its_last_line():
    out = StringIO()

    call_command("create_project", "acme", "--max-budget", "250.5", "--timezone", "Europe/Berlin", stdout=out)

    raw = out.getvalue().strip().splitlines()[-1]
    project = Project.objects.get(name="acme")
    assert (project.max_budget, project.timezone) == (Decimal("250.5"), "Europe/Berlin")
    key = ApiKey.objects.get()
    assert raw.startswith("bm_") and raw not in (key.key_hash, key.prefix)
    assert services.api_key_authenticate(raw).project == project
    assert AuditLog.objects.filter(action="api_key_create").count() == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["acme", "--timezone", "Mars/Olympus"], "unknown time zone"),
        (["acme", "--max-budget", "-5"], "non-negative"),
        (["acme", "--max-budget", "lots"], "non-negative"),
        (["acme", "--duration", "hourly"], "duration must be one of"),
    ],
)
def test_create_project_refuses_bad_input_and_writes_nothing(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("create_project", *args, stdout=StringIO())
    assert not Project.objects.exists()
    assert not ApiKey.objects.exists()


def test_create_project_refuses_a_name_that_is_taken(project):
    with pytest.raises(CommandError, match="already exists"):
        call_command("create_project", project.name, stdout=StringIO())
    assert Project.objects.count() == 1


# --- run_embedded's login line (the demo superuser's password) ----------------------------------------

def embedded_login(password_file) -> str:
    from budgets.management.commands.run_embedded import Command

    return Command(stdout=StringIO()).ensure_admin(password_file)


def test_run_embedded_prints_the_generated_password_while_it_is_still_the_admins_password(tmp_path):
    from django.contrib.auth import get_user_model

    password_file = tmp_path / "admin_password"

    login = embedded_login(password_file)

    password = password_file.read_text().strip()
    assert login.startswith(f"Log in as admin with password {password} ")
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert embedded_login(password_file) == login  # the next start prints it again


def test_run_embedded_does_not_print_a_password_changed_in_the_admin_and_says_how_to_reset_it(tmp_path):
    from django.contrib.auth import get_user_model

    password_file = tmp_path / "admin_password"
    embedded_login(password_file)
    old_password = password_file.read_text().strip()
    admin = get_user_model().objects.get(username="admin")
    admin.set_password("a new password chosen in the admin")
    admin.save()

    login = embedded_login(password_file)

    assert old_password not in login
    assert "password changed" in login
    assert "python manage.py changepassword admin" in login
    admin.refresh_from_db()
    assert admin.check_password("a new password chosen in the admin")  # reading it changed nothing
