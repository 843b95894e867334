"""python manage.py reset_budgets: run one reset sweep now (what beat runs every minute)."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from budgets.tasks import run_reset_sweep


class Command(BaseCommand):
    help = "Reset every budget and project whose period has ended (exactly once per period), then exit."

    def handle(self, *args: Any, **options: Any) -> None:
        result = run_reset_sweep()
        self.stdout.write(f"Reset {result.budgets} budgets ({result.projects} projects)")
