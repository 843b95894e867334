"""`manage.py load_prices [PATH_OR_URL]`: load LiteLLM's model price map into the price table."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from budgets.domain.pricing import PriceMapError
from budgets.services.prices import load_price_map


class Command(BaseCommand):
    help = (
        "Load model prices from LiteLLM's model price map: the shipped snapshot, a file "
        "(.json or .json.gz) or an http(s) URL. Running it again changes nothing; rows "
        "edited in admin are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "source",
            nargs="?",
            default=None,
            metavar="PATH_OR_URL",
            help="A price map file or http(s) URL; default: the snapshot shipped with the project.",
        )

    def handle(self, *args: Any, source: str | None = None, **options: Any) -> None:
        try:
            result = load_price_map(source)
        except PriceMapError as exc:
            raise CommandError(f"No prices loaded: {exc}") from exc
        kept = f", {result.kept} edited in admin kept" if result.kept else ""
        self.stdout.write(
            f"Prices: {result.added} added, {result.changed} changed, "
            f"{result.unchanged} unchanged{kept} (from {result.source})"
        )
