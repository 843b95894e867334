"""python manage.py seed_demo [--users N] [--days D] [--events M] [--project NAME] [--reset]

Fills a project with realistic, fabricated spend so the console has something to show.
The work is budgets.services.demo.demo_seed: the ledger in bulk (drawn by PostgreSQL itself), every
derived number (budget and project spend, per-model spend, past periods) set from the ledger.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from budgets.base.errors import BudgetError
from budgets.services.demo import demo_seed

CENT = Decimal("0.01")


class Command(BaseCommand):
    help = (
        "Fill a project (default 'demo') with realistic fabricated spend: users with budgets, several "
        "models at their real prices, a ledger over the last days, past periods, a few users over budget. "
        "Prints an API key for the project as the last line."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--users", type=int, default=50, help="How many users with budgets (default 50).")
        parser.add_argument("--days", type=int, default=30, help="Spread the calls over the last D days (default 30).")
        parser.add_argument("--events", type=int, default=5000, help="How many ledger events (default 5000).")
        parser.add_argument("--project", default="demo", help="The project's name (default 'demo').")
        parser.add_argument("--timezone", default="UTC", help="Time zone of a new project (default UTC).")
        parser.add_argument("--seed", type=int, default=42, help="Random seed: the same seed gives the same demo.")
        parser.add_argument("--reset", action="store_true",
                            help="Delete the project (ledger, budgets, keys, audit) first if it already has events.")

    def handle(self, *args: Any, **options: Any) -> None:
        users, days, events = options["users"], options["days"], options["events"]
        if not 1 <= users <= 100_000:
            raise CommandError("--users must be between 1 and 100000")
        if not 1 <= days <= 3650:
            raise CommandError("--days must be between 1 and 3650")
        if not 0 <= events <= 10_000_000:
            raise CommandError("--events must be between 0 and 10000000")
        try:
            summary = demo_seed(name=options["project"], users=users, days=days, events=events,
                                timezone=options["timezone"], seed=options["seed"], reset=options["reset"])
        except BudgetError as exc:
            raise CommandError(exc.message) from None
        project = summary["project"]
        self.stdout.write(
            f"Seeded project {project.name!r} (id {project.pk}): {summary['users']} users, {summary['events']} "
            f"events over {days} days, {summary['periods']} past periods, {summary['over']} users over budget; "
            f"spend this period ${project.current_spend.quantize(CENT)} of a ${project.max_budget.quantize(CENT)} cap."
        )
        if summary["member"]:
            self.stdout.write(f"User {summary['member']!r} is a member of the project.")
        self.stdout.write("API key for the demo project (shown only once; only its hash is stored):")
        self.stdout.write(summary["key"])
