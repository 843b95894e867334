"""Many budgets at once: the users list's bulk action, and a CSV import with a preview.

The import is two steps: the upload counts the rows that are new, changed and unchanged, lists
every row's error (or, with none, the first changes: new, changed from → to) and writes nothing;
the confirm step sends the same text back, checks it again and applies every change in one
transaction — only if no row is bad.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from ..base.errors import BudgetError, InvalidInput
from ..forms import MAX_AMOUNT, BudgetImportForm, BulkBudgetForm, ImportRow
from ..models import Action, Duration, Project
from ..selectors import console as selectors
from ..services.bulk_budgets import (
    BudgetRow,
    budget_reset_many,
    budget_row_check,
    budget_row_unchanged,
    budget_set_many,
)
from ..templatetags.console import format_dollars
from .common import actor, project_for, render_page, run_form

PREVIEW_ROWS = 200  # a file up to this size is listed whole on the preview; a bigger one, its first changes


def _set_message(count: int, amount: Decimal, duration: str | None) -> str:
    """What a bulk set changed: the amount, and the period only when one was chosen."""
    users = f"{count} user{'s' if count != 1 else ''}"
    if duration is None:
        return f"Set the budget of {users} to {format_dollars(amount)}; each keeps its reset period."
    period = "never reset" if duration == Duration.NONE else f"reset {Duration(duration).label.lower()}"
    return f"Set the budget of {users} to {format_dollars(amount)}, {period}."


@login_required
@require_POST
def budget_bulk(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.CHANGE)
    form = BulkBudgetForm(request.POST)
    back = request.POST.get("next") or ""
    # Back to the same page of the list (a query string only: never another site).
    users_page = reverse("user_list", args=[project.pk]) + (back if back.startswith("?") else "")

    def apply(data: dict[str, Any]) -> str:
        user_ids = list(dict.fromkeys(data["user_ids"]))
        if data["op"] == "set":
            rows = [BudgetRow(u, data["total_budget"], data["duration"]) for u in user_ids]
            count = budget_set_many(project=project, rows=rows, actor=actor(request))
            return _set_message(count, data["total_budget"], data["duration"])
        count = budget_reset_many(project=project, user_ids=user_ids, actor=actor(request))
        return f"Reset the spend of {count} user{'s' if count != 1 else ''} to zero."

    def refused() -> HttpResponse:
        # The form lives on the users page: its errors come back as messages above the list.
        for field, errors in form.errors.items():
            for error in errors:
                label = "Nothing was changed: " if field == "__all__" else f"{form.fields[field].label or field}: "
                messages.error(request, f"{label}{error}")
        return redirect(users_page)

    return run_form(request, form, apply, done=lambda _: redirect(users_page), refused=refused,
                    message=lambda text: text)


def check_rows(rows: list[ImportRow]) -> None:
    """Check each row's values with the apply's own check; a refused row keeps the reason as its error."""
    for row in rows:
        if row.error:
            continue
        try:
            row.user_id, row.total_budget, row.duration = budget_row_check(
                row.user_id, row.raw_amount or None, row.raw_duration, max_amount=MAX_AMOUNT)
        except InvalidInput as exc:
            row.error = exc.message


def preview(project: Project, rows: list[ImportRow]) -> list[dict[str, Any]]:
    """Each row with what it would do: error, new, changed (from → to) or unchanged."""
    check_rows(rows)
    existing = selectors.budgets_by_user(project, [r.user_id for r in rows if not r.error])
    result = []
    for row in rows:
        budget = existing.get(row.user_id)
        if row.error:
            change = "error"
        elif budget is None:
            change = "new"
        elif budget_row_unchanged(budget, BudgetRow(row.user_id, row.total_budget, row.duration)):  # type: ignore[arg-type]
            change = "unchanged"
        else:
            change = "changed"
        result.append({"row": row, "budget": budget, "change": change})
    return result


@login_required
@require_http_methods(["GET", "POST"])
def budget_import(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_for(request, project_id, Action.CHANGE)
    if request.method == "GET":
        return render_page(request, "console/budget_import.html", {"form": BudgetImportForm()}, project=project,
                           nav="users")
    form = BudgetImportForm(request.POST, request.FILES)
    if not form.is_valid():
        return render_page(request, "console/budget_import.html", {"form": form}, project=project, nav="users",
                           status=400)
    # Not run_form: an import is two steps (a preview page of every row, then the apply), and both
    # answer the preview page, not a redirect.
    refused = ""
    if request.POST.get("confirm") == "yes":
        rows: list[ImportRow] = form.cleaned_data["rows"]
        if not any(row.error for row in rows):  # the file's shape; the service checks every row's values
            # The whole text again, checked again; what is unchanged is decided under the budgets' locks.
            batch = [(row.user_id, row.raw_amount or None, row.raw_duration) for row in rows]
            try:
                count = budget_set_many(project=project, rows=batch, actor=actor(request), max_amount=MAX_AMOUNT,
                                        skip_unchanged=True)
            except InvalidInput as exc:
                refused = exc.message  # a bad row: the preview below names every one
            except BudgetError as exc:
                messages.error(request, f"Nothing was imported: {exc.message}")
            else:
                messages.success(request, f"Imported {count} budget change{'s' if count != 1 else ''} "
                                          f"({len(rows) - count} unchanged).")
                return redirect("user_list", project.pk)
    result = preview(project, form.cleaned_data["rows"])
    errors = sum(1 for r in result if r["change"] == "error")
    if refused and not errors:
        messages.error(request, f"Nothing was imported: {refused}")
    changes = [r for r in result if r["change"] in ("new", "changed")]
    # The page lists every error; without errors, every row of a small file, or the first PREVIEW_ROWS changes
    # of a big one and counts the rest (a 10,000-row table took seconds to render, and nobody reads it).
    # The confirm step applies the whole text sent back either way.
    if errors:
        shown = [r for r in result if r["change"] == "error"]
    else:
        shown = result if len(result) <= PREVIEW_ROWS else changes[:PREVIEW_ROWS]
    listed = sum(1 for r in shown if r["change"] in ("new", "changed"))
    context = {"form": form, "rows": result, "shown": shown, "errors": errors, "changes": len(changes),
               "hidden_changes": 0 if errors else len(changes) - listed, "listed_changes": listed,
               "hidden_unchanged": 0 if errors or len(result) <= PREVIEW_ROWS else len(result) - len(changes),
               "text": form.cleaned_data["text"],
               "counts": {k: sum(1 for r in result if r["change"] == k) for k in ("new", "changed", "unchanged")}}
    return render_page(request, "console/budget_import.html", context, project=project, nav="users",
                       status=400 if errors else 200)
