"""An alert as a Slack message (Block Kit), built from the alert's webhook payload.

The payload is the alert's one shape (services.alerts.alert_payload): the Slack message reads
it, so an alert kind added later renders without a change here. The fields known today
(scope, user, threshold, spend, limit, period_start) get their words; a `unit` (usd, tokens,
requests), a `subject` or a `window` are read when present; any other field is listed under its
own name. A kind may add a title to TITLES; one without gets a generic header.

Slack's limits are kept (a header of 150 characters, ten fields of 2,000), and the text typed by
people (user ids, project names) is escaped: `&`, `<` and `>` are Slack's control characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any
from urllib.parse import urlsplit

from ..base.money import format_dollars

THRESHOLD_CROSSED = "budget.threshold_crossed"
TEST = "budget.test"

# Headers per alert type; {who} and {threshold} are filled in (a type without one: GENERIC_TITLE).
TITLES = {
    THRESHOLD_CROSSED: "{who} reached {threshold}% of {budget}",
    "budget.threshold_resolved": "{who} is back under {threshold}% of {budget}",
    "budget.forecast_over_limit": "{who} is forecast to exceed {budget} by the end of its window",
    "budget.spend_anomaly": "Spend anomaly: {who} spent over {threshold}% of its daily average today",
    TEST: "Test message from Budget Manager",
}
GENERIC_TITLE = "Budget alert: {kind}"

# Shown in their own words; every other payload field is listed by name. Never shown: the ids.
_KNOWN = {"type", "kind", "alert_id", "project", "scope", "user", "subject", "threshold", "spend", "limit", "unit",
          "period_start", "window", "created_at", "message"}
_UNITS = {"usd": "", "tokens": "tokens", "requests": "requests"}
HEADER_MAX = 150
FIELD_MAX = 2000
FIELDS_MAX = 10


def escape(text: Any) -> str:
    """Text for a Slack message: `&`, `<`, `>` escaped (they start links and mentions)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cut(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def _decimal(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return amount if amount.is_finite() else None


def amount_text(value: Any, unit: str = "usd") -> str:
    """$8.12, or `1,200 tokens`, `30 requests` (whole units; an unknown unit is named after the number)."""
    amount = _decimal(value)
    if amount is None:
        return "—"
    if unit == "usd":
        return format_dollars(amount)
    whole = amount.quantize(Decimal(1), ROUND_HALF_EVEN)
    return f"{whole:,f} {_UNITS.get(unit, unit)}".rstrip()


def used_percent(spend: Any, limit: Any) -> str:
    """`81%` of the limit used (one decimal below 10%); empty for a missing or zero limit."""
    spent, cap = _decimal(spend), _decimal(limit)
    if spent is None or cap is None or cap <= 0:
        return ""
    share = spent * 100 / cap
    places = Decimal("0.1") if share < 10 else Decimal(1)
    return f"{share.quantize(places, ROUND_HALF_EVEN)}%"


def when_text(value: Any) -> str:
    """`10 Mar 2026 00:00 UTC` for a datetime or an ISO string; anything else as it is."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)  # "Z" too, from Python 3.11
        except ValueError:
            return value
    if isinstance(value, datetime):
        zone = value.tzname() or ""
        return f"{value.day} {value:%b %Y %H:%M} {zone}".rstrip()
    return str(value)


def _who(alert: Mapping[str, Any]) -> tuple[str, str]:
    """(who, whose budget): ("alice", "the budget"), ("the project", "its cap"), ("team ml", "its limit")."""
    scope = str(alert.get("scope") or "")
    subject = alert.get("user") if scope == "user" else alert.get("subject")
    if scope == "user":
        return str(subject or "a user"), "the budget"
    if scope == "project":
        return "the project", "its cap"
    name = f"{scope} {subject}".strip() if subject else (scope or "a budget")
    return name, "its limit"


def _budget_field(alert: Mapping[str, Any]) -> str:
    scope = str(alert.get("scope") or "")
    if scope == "user":
        return f"User budget of {escape(alert.get('user') or '?')}"
    if scope == "project":
        return "Project cap"
    subject = alert.get("subject")
    label = scope.capitalize() + " limit" if scope else "Limit"
    return f"{label} {escape(subject)}" if subject else label


def title_of(alert: Mapping[str, Any]) -> str:
    kind = str(alert.get("type") or "alert")
    who, budget = _who(alert)
    template = TITLES.get(kind, GENERIC_TITLE) if alert.get("threshold") is not None or kind == TEST \
        else GENERIC_TITLE
    title = template.format(who=who, threshold=alert.get("threshold"), budget=budget, kind=kind)
    return _cut(title[:1].upper() + title[1:], HEADER_MAX)


def _fields(alert: Mapping[str, Any]) -> list[str]:
    unit = str(alert.get("unit") or "usd")
    fields = []
    if alert.get("project") is not None:
        fields.append(f"*Project*\n{escape(alert['project'])}")
    if alert.get("scope"):
        fields.append(f"*Budget*\n{_budget_field(alert)}")
    if "spend" in alert or "limit" in alert:
        share = used_percent(alert.get("spend"), alert.get("limit"))
        figures = f"{amount_text(alert.get('spend'), unit)} of {amount_text(alert.get('limit'), unit)}"
        fields.append(f"*Spend / limit*\n{figures}" + (f" ({share})" if share else ""))
    if alert.get("threshold") is not None:
        fields.append(f"*Threshold*\n{escape(alert['threshold'])}%")
    if alert.get("period_start") is not None or alert.get("window"):
        window = f"{escape(alert['window']).capitalize()}, " if alert.get("window") else ""
        since = f"since {when_text(alert['period_start'])}" if alert.get("period_start") is not None else ""
        fields.append(f"*Period*\n{window}{since}".rstrip(", "))
    for name, value in alert.items():
        if name not in _KNOWN and value not in (None, "", [], {}):
            label = name.replace("_", " ").capitalize()
            shown = when_text(value) if isinstance(value, datetime) else value
            fields.append(f"*{escape(label)}*\n{escape(shown)}")
    return [_cut(text, FIELD_MAX) for text in fields[:FIELDS_MAX]]


def summary_of(alert: Mapping[str, Any]) -> str:
    """One line for the notification and for clients that show no blocks."""
    project = f"[{alert['project']}] " if alert.get("project") is not None else ""
    figures = ""
    if "spend" in alert and "limit" in alert:
        unit = str(alert.get("unit") or "usd")
        figures = f": {amount_text(alert.get('spend'), unit)} of {amount_text(alert.get('limit'), unit)}"
    return escape(f"{project}{title_of(alert)}{figures}")


def slack_message(alert: Mapping[str, Any], *, link: str | None,
                  link_text: str = "Open in Budget Manager") -> dict[str, Any]:
    """The Block Kit message for an alert payload: header, the figures, a button to `link` (absolute)."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title_of(alert), "emoji": False}},
    ]
    if alert.get("message"):
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _cut(escape(alert["message"]), 3000)}})
    fields = _fields(alert)
    if fields:
        blocks.append({"type": "section", "fields": [{"type": "mrkdwn", "text": text} for text in fields]})
    if link:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": link_text}, "url": link,
             "action_id": "open_console"},
        ]})
    context = ["Budget Manager"]
    if alert.get("alert_id") is not None:
        context.append(f"alert {escape(alert['alert_id'])}")
    if alert.get("created_at") is not None:
        context.append(f"raised {when_text(alert['created_at'])}")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]})
    return {"text": summary_of(alert), "blocks": blocks}


def mask_url(url: str) -> str:
    """A Slack webhook URL as the console shows it: its secret path hidden but for the last 4 characters."""
    if not url:
        return ""
    parts = urlsplit(url)
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}/…{url.rstrip('/')[-4:]}"
