"""python manage.py create_project NAME [--max-budget X] [--timezone TZ]"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from budgets import services
from budgets.base.errors import BudgetError


class Command(BaseCommand):
    help = "Create a project and an API key for it; the key is printed once, as the last line."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="The project's unique name (LiteLLM's project_name).")
        parser.add_argument("--max-budget", dest="max_budget", default=None, help="Project-wide cap in dollars.")
        parser.add_argument("--timezone", default="UTC", help="Time zone for calendar periods (default UTC).")
        parser.add_argument("--duration", default=None,
                            help="Period of the project-wide cap: daily, weekly, monthly, yearly (default: none).")
        parser.add_argument("--key-name", default="default", help="Name of the first API key.")

    def handle(self, *args, **options) -> None:
        try:
            project = services.project_create(
                name=options["name"], max_budget=options["max_budget"], timezone=options["timezone"],
                duration=options["duration"], actor=services.actor_for_system("create_project"),
            )
            _, raw = services.api_key_create(project=project, name=options["key_name"],
                                              actor=services.actor_for_system("create_project"))
        except BudgetError as exc:
            raise CommandError(exc.message) from None
        cap = f"${project.max_budget}" if project.max_budget is not None else "none"
        self.stdout.write(
            f"Created project {project.name!r} (id {project.pk}, max budget {cap}, time zone {project.timezone})."
        )
        self.stdout.write("API key (shown only once; only its hash is stored):")
        self.stdout.write(raw)
