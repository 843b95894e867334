"""Writes: every change to budgets, spend and keys goes through these functions.

The console, the JSON API, the hosted protocol, the admin and the Celery tasks
all call them, so each rule (validation, audit, lazy reset) lives in one place.
Spend is only ever changed with F() expressions or conditional updates.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils.timezone import now as utcnow

from . import periods, pricing
from .errors import BudgetExceeded, IdempotencyConflict, InvalidInput, UnknownUser
from .models import (
    ApiKey,
    AuditLog,
    BudgetPeriod,
    CostEvent,
    Duration,
    ModelSpend,
    Project,
    UserBudget,
)
from .fields import money
from .money import stored, to_money
from .usage import Usage, validate_model

SYSTEM_SWEEP = "system:sweep"
SYSTEM_LAZY = "system:lazy-reset"
RESET_BATCH_SIZE = 500
KEY_PREFIX = "bm_"


# --- validation shared by every entry point -------------------------------------------------


def validate_user_id(user_id: Any) -> str:
    if not isinstance(user_id, str) or not user_id.strip():
        raise InvalidInput("user must be a non-empty string")
    if len(user_id) > 255:
        raise InvalidInput("user must be at most 255 characters")
    return user_id


def validate_duration(duration: Any, duration_days: Any = None) -> tuple[str, int | None]:
    """Normalise a duration: None/"none"/"daily"/.../"days" (with duration_days)."""
    if duration is None or duration == "":
        duration = Duration.NONE
    if duration not in Duration.values:
        raise InvalidInput(f"duration must be one of: none, daily, weekly, monthly, yearly (got {duration!r})")
    if duration == Duration.DAYS:
        if isinstance(duration_days, bool) or not isinstance(duration_days, int) or duration_days < 1:
            raise InvalidInput("duration_days must be a whole number of days, at least 1")
        return duration, duration_days
    return duration, None


def validate_timezone(name: Any) -> str:
    try:
        return periods.validate_timezone(name)
    except (ValueError, TypeError):
        raise InvalidInput(f"unknown time zone: {name!r}") from None


def budget_snapshot(budget: UserBudget) -> dict[str, Any]:
    """A budget's state as the audit log keeps it."""
    return {
        "total_budget": str(budget.total_budget),
        "duration": budget.duration,
        "duration_days": budget.duration_days,
        "current_spend": str(budget.current_spend),
        "period_start": budget.period_start.isoformat(),
        "next_reset_at": budget.next_reset_at.isoformat() if budget.next_reset_at else None,
    }


def _audit(
    *, project_id: int, action: str, actor: str, budget: UserBudget | None = None, user_id: str = "",
    before: dict | None = None, after: dict | None = None,
) -> AuditLog:
    return AuditLog.objects.create(
        project_id=project_id,
        budget=budget,
        user_id=user_id or (budget.user_id if budget else ""),
        action=action,
        actor=actor,
        before=before,
        after=after,
    )


# --- projects and keys ------------------------------------------------------------------------


def project_create(
    *, name: str, max_budget: Any = None, timezone: str = "UTC", duration: str | None = None,
    duration_days: int | None = None, actor: str = "system",
) -> Project:
    if not isinstance(name, str) or not name.strip() or len(name) > 200:
        raise InvalidInput("project name must be a non-empty string of at most 200 characters")
    tz = validate_timezone(timezone)
    cap = None if max_budget is None else to_money(max_budget, "max_budget")
    duration, duration_days = validate_duration(duration, duration_days)
    at = utcnow()
    period = periods.period_containing(duration, tz, at, days=duration_days, anchor=at)
    with transaction.atomic():
        if Project.objects.filter(name=name).exists():
            raise InvalidInput(f"a project named {name!r} already exists")
        project = Project.objects.create(
            name=name, max_budget=cap, timezone=tz, duration=duration, duration_days=duration_days,
            period_start=period.start, next_reset_at=period.next_reset,
        )
        _audit(project_id=project.pk, action="project_create", actor=actor,
               after={"name": name, "max_budget": str(cap) if cap is not None else None, "timezone": tz})
    return project


def project_get_or_create(*, name: str) -> Project:
    """The seed's `BudgetManager(project_name)`: a new name creates the project."""
    project = Project.objects.filter(name=name).first()
    if project is not None:
        project_refresh(project)
        return project
    try:
        return project_create(name=name, actor="manager")
    except InvalidInput:
        # Created concurrently by someone else: use theirs.
        return Project.objects.get(name=name)


def project_refresh(project: Project, at: datetime | None = None) -> Project:
    """Start the project's new spend period first if its period has ended."""
    if project.is_due(at):
        reset_due_projects(at=at, project=project)
        project.refresh_from_db()
    return project


def project_update(
    *, project: Project, actor: str, max_budget: Any = ..., timezone: Any = ...,
    alert_thresholds: Any = ..., alert_webhook_url: Any = ..., alert_email: Any = ...,
) -> Project:
    """Change a project's settings; only the arguments given change."""
    before = {"max_budget": str(project.max_budget) if project.max_budget is not None else None,
              "timezone": project.timezone, "alert_thresholds": project.alert_thresholds}
    changes: dict[str, Any] = {}
    if max_budget is not ...:
        changes["max_budget"] = None if max_budget in (None, "") else to_money(max_budget, "max_budget")
    if timezone is not ...:
        changes["timezone"] = validate_timezone(timezone)
    if alert_thresholds is not ...:
        if not isinstance(alert_thresholds, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) and 1 <= t <= 1000 for t in alert_thresholds
        ):
            raise InvalidInput("alert_thresholds must be a list of whole percentages between 1 and 1000")
        changes["alert_thresholds"] = sorted(set(alert_thresholds))
    if alert_webhook_url is not ...:
        changes["alert_webhook_url"] = alert_webhook_url or ""
    if alert_email is not ...:
        changes["alert_email"] = alert_email or ""
    with transaction.atomic():
        Project.objects.filter(pk=project.pk).update(**changes)
        project.refresh_from_db()
        _audit(project_id=project.pk, action="project_update", actor=actor, before=before,
               after={k: str(v) if isinstance(v, Decimal) else v for k, v in changes.items()})
    return project


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def api_key_create(*, project: Project, name: str, actor: str = "system") -> tuple[ApiKey, str]:
    """Create a key; the raw secret is returned once and only its hash is kept."""
    if not isinstance(name, str) or not name.strip() or len(name) > 100:
        raise InvalidInput("key name must be a non-empty string of at most 100 characters")
    raw = KEY_PREFIX + secrets.token_urlsafe(32)  # 256 bits
    with transaction.atomic():
        key = ApiKey.objects.create(project=project, name=name.strip(), prefix=raw[:10], key_hash=hash_key(raw))
        _audit(project_id=project.pk, action="api_key_create", actor=actor, after={"name": key.name, "prefix": key.prefix})
    return key, raw


def api_key_authenticate(raw: str) -> ApiKey | None:
    """The active key for this secret, or None; marks it used (at most once a minute)."""
    if not isinstance(raw, str) or not raw.startswith(KEY_PREFIX) or len(raw) > 200:
        return None
    digest = hash_key(raw)
    key = ApiKey.objects.select_related("project").filter(key_hash=digest, revoked_at__isnull=True).first()
    if key is None or not hmac.compare_digest(key.key_hash, digest):
        return None
    at = utcnow()
    if key.last_used_at is None or at - key.last_used_at > timedelta(minutes=1):
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=at)
        key.last_used_at = at
    return key


def api_key_revoke(*, key: ApiKey, actor: str) -> ApiKey:
    with transaction.atomic():
        if ApiKey.objects.filter(pk=key.pk, revoked_at__isnull=True).update(revoked_at=utcnow()):
            _audit(project_id=key.project_id, action="api_key_revoke", actor=actor,
                   after={"name": key.name, "prefix": key.prefix})
        key.refresh_from_db()
    return key


# --- budgets ----------------------------------------------------------------------------------


def budget_get(*, project: Project, user_id: str, at: datetime | None = None) -> UserBudget:
    """The user's budget, reset first if its period has ended; UnknownUser if there is none."""
    budget = UserBudget.objects.filter(project=project, user_id=user_id).first()
    if budget is None:
        raise UnknownUser(f"user {user_id!r} has no budget in project {project.name!r}")
    if budget.is_due(at):
        reset_due_budgets(ids=[budget.pk], at=at, actor=SYSTEM_LAZY)
        budget.refresh_from_db()
    budget.project = project
    return budget


def budget_set(
    *, project: Project, user_id: str, total_budget: Any, duration: Any = None, duration_days: Any = None,
    created_at: datetime | None = None, actor: str,
) -> tuple[UserBudget, bool]:
    """Create or replace a user's budget; returns (budget, created).

    Replacing keeps what was spent in the current period (spend is a fact);
    a changed duration moves the budget into the period of the new duration.
    """
    user_id = validate_user_id(user_id)
    amount = to_money(total_budget, "total_budget")
    duration, duration_days = validate_duration(duration, duration_days)
    at = utcnow()
    anchor = created_at or at
    with transaction.atomic():
        budget = UserBudget.objects.select_for_update().filter(project=project, user_id=user_id).first()
        if budget is None:
            period = periods.period_containing(duration, project.timezone, at, days=duration_days, anchor=anchor)
            try:
                with transaction.atomic():
                    budget = UserBudget.objects.create(
                        project=project, user_id=user_id, total_budget=amount, duration=duration,
                        duration_days=duration_days, period_start=period.start, next_reset_at=period.next_reset,
                        created_at=anchor, updated_at=at,
                    )
            except IntegrityError:
                # Created concurrently: replace that one instead.
                budget = UserBudget.objects.select_for_update().get(project=project, user_id=user_id)
            else:
                budget.project = project
                _audit(project_id=project.pk, budget=budget, action="budget_create", actor=actor,
                       after=budget_snapshot(budget))
                return budget, True
        budget.project = project
        if budget.is_due(at):
            _reset_rows(_due_rows(UserBudget.objects.filter(pk=budget.pk)), at=at, actor=SYSTEM_LAZY)
            budget.refresh_from_db()
        before = budget_snapshot(budget)
        fields = {"total_budget": amount, "updated_at": at}
        if (duration, duration_days) != (budget.duration, budget.duration_days):
            period = periods.period_containing(
                duration, project.timezone, at, days=duration_days, anchor=created_at or budget.period_start
            )
            fields.update(duration=duration, duration_days=duration_days, period_start=period.start,
                          next_reset_at=period.next_reset)
        UserBudget.objects.filter(pk=budget.pk).update(**fields)
        budget.refresh_from_db()
        _audit(project_id=project.pk, budget=budget, action="budget_update", actor=actor, before=before,
               after=budget_snapshot(budget))
    return budget, False


def budget_delete(*, budget: UserBudget, actor: str) -> None:
    """Delete a budget; its ledger rows stay (they are facts)."""
    with transaction.atomic():
        _audit(project_id=budget.project_id, budget=None, user_id=budget.user_id, action="budget_delete",
               actor=actor, before=budget_snapshot(budget))
        budget.delete()


def budget_reset(*, budget: UserBudget, actor: str, reason: str = "manual") -> UserBudget:
    """Set a user's spend in the current period to zero (audited); the ledger stays."""
    with transaction.atomic():
        locked = UserBudget.objects.select_for_update().get(pk=budget.pk)
        before = budget_snapshot(locked)
        at = utcnow()
        UserBudget.objects.filter(pk=locked.pk).update(current_spend=0, updated_at=at)
        ModelSpend.objects.filter(budget_id=locked.pk).delete()
        locked.refresh_from_db()
        _audit(project_id=locked.project_id, budget=locked, action=f"budget_reset_{reason}", actor=actor,
               before=before, after=budget_snapshot(locked))
    budget.refresh_from_db()
    return budget


# --- recording cost -------------------------------------------------------------------------


@dataclass(frozen=True)
class CostRecorded:
    event: CostEvent
    budget: UserBudget
    created: bool  # False for an idempotent retry: nothing new was recorded
    exceeded: str | None  # "user" or "project" when a budget is used up after this call

    @property
    def budget_exceeded(self) -> bool:
        return self.exceeded is not None


def _no_room(spend: Decimal, cap: Decimal, extra: Decimal) -> bool:
    # Spend that reached the cap is over; a new call may bring spend up to the cap, not past it.
    return spend >= cap if extra == 0 else spend + extra > cap


def exceeded_scope(budget: UserBudget, project: Project, extra: Decimal = Decimal(0)) -> str | None:
    """Which budget, if any, has no room left for `extra` more spend ("user" is named first)."""
    if _no_room(budget.current_spend, budget.total_budget, extra):
        return "user"
    if project.max_budget is not None and _no_room(project.current_spend, project.max_budget, extra):
        return "project"
    return None


def cost_of_usage(usage: Usage) -> Decimal:
    price = pricing.get_price(usage.model)
    return pricing.cost_of_tokens(
        price, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
        cached_tokens=usage.cached_tokens, cache_creation_tokens=usage.cache_creation_tokens,
    )


def cost_record(
    *, project: Project, user_id: str, usage: Usage, cost: Any = None, source: str,
    idempotency_key: str | None = None, fingerprint: str = "", enforce: bool = False,
) -> CostRecorded:
    """Record one call's cost in the ledger and add it to the user's and the project's spend.

    `cost` None prices the usage from the price table (UnknownModel if the model has no price).
    With an idempotency key, a retry returns the first event and records nothing.
    With `enforce`, a call that a used-up budget has no room for raises BudgetExceeded instead.
    """
    model = validate_model(usage.model)
    # Rounded once to the stored 12 places, so the ledger, the spend and the answer agree.
    amount = stored(cost_of_usage(usage) if cost is None else to_money(cost, "cost"))
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 0 < len(idempotency_key) <= 255):
        raise InvalidInput("Idempotency-Key must be 1 to 255 characters")

    with transaction.atomic():
        project_refresh(project)
        budget = budget_get(project=project, user_id=user_id)
        if idempotency_key:
            replay = _replay(project, idempotency_key, fingerprint, budget)
            if replay is not None:
                return replay
        if enforce:
            # Lock the row so concurrent enforced calls see each other's spend.
            budget = UserBudget.objects.select_for_update().get(pk=budget.pk)
            project.refresh_from_db(fields=["current_spend", "max_budget"])
            scope = exceeded_scope(budget, project, amount)
            if scope is not None:
                raise BudgetExceeded(
                    f"the {scope} budget has no room for ${amount} "
                    f"({'user ' + repr(user_id) if scope == 'user' else 'project ' + repr(project.name)})",
                    scope=scope,
                )
        event_fields = dict(
            project=project, budget_id=budget.pk, user_id=user_id, model=model,
            prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
            cached_tokens=usage.cached_tokens, cache_creation_tokens=usage.cache_creation_tokens,
            cost=amount, source=source, idempotency_key=idempotency_key or None, request_fingerprint=fingerprint,
        )
        try:
            with transaction.atomic():
                event = CostEvent.objects.create(**event_fields)
        except IntegrityError:
            replay = _replay(project, idempotency_key or "", fingerprint, budget) if idempotency_key else None
            if replay is None:
                raise
            return replay
        _add_spend(project=project, budget=budget, model=model, amount=amount, usage=usage)
        budget.refresh_from_db()
        # period_start too: alerts are once per period, and a sweep may have just started a new one.
        project.refresh_from_db(fields=["current_spend", "period_start"])
        budget.project = project
        from . import alerts  # noqa: PLC0415 (alerts imports services)

        alerts.spend_recorded(project=project, budget=budget, amount=amount)
        return CostRecorded(event=event, budget=budget, created=True, exceeded=exceeded_scope(budget, project))


def _replay(project: Project, key: str, fingerprint: str, budget: UserBudget) -> CostRecorded | None:
    event = CostEvent.objects.filter(project=project, idempotency_key=key).first()
    if event is None:
        return None
    if event.request_fingerprint != fingerprint:
        raise IdempotencyConflict("this Idempotency-Key was used with a different request")
    return CostRecorded(event=event, budget=budget, created=False, exceeded=exceeded_scope(budget, project))


def _add_spend(*, project: Project, budget: UserBudget, model: str, amount: Decimal, usage: Usage) -> None:
    """Increment spend with F(): concurrent calls add up, none is lost."""
    at = utcnow()
    UserBudget.objects.filter(pk=budget.pk).update(current_spend=F("current_spend") + money(amount), updated_at=at)
    increments = {
        "spend": F("spend") + money(amount),
        "prompt_tokens": F("prompt_tokens") + usage.prompt_tokens,
        "completion_tokens": F("completion_tokens") + usage.completion_tokens,
    }
    if not ModelSpend.objects.filter(budget_id=budget.pk, model=model).update(**increments):
        try:
            with transaction.atomic():
                ModelSpend.objects.create(
                    budget_id=budget.pk, model=model, spend=amount,
                    prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                )
        except IntegrityError:
            ModelSpend.objects.filter(budget_id=budget.pk, model=model).update(**increments)
    Project.objects.filter(pk=project.pk).update(current_spend=F("current_spend") + money(amount))


def set_event_response(event: CostEvent, response: dict[str, Any]) -> None:
    """Keep the first answer to an idempotent request, to replay it on a retry."""
    CostEvent.objects.filter(pk=event.pk, response__isnull=True).update(response=response)


# --- periods and resets -----------------------------------------------------------------------


@dataclass(frozen=True)
class _DueRow:
    id: int
    project_id: int
    user_id: str
    timezone: str
    duration: str
    duration_days: int | None
    period_start: datetime
    next_reset_at: datetime
    current_spend: Decimal
    total_budget: Decimal


def _due_rows(queryset: Any, limit: int | None = None) -> list[_DueRow]:
    values = queryset.values_list(
        "id", "project_id", "user_id", "project__timezone", "duration", "duration_days",
        "period_start", "next_reset_at", "current_spend", "total_budget",
    ).order_by("next_reset_at", "id")
    if limit is not None:
        values = values[:limit]
    return [_DueRow(*row) for row in values]


def reset_due_budgets(
    *, at: datetime | None = None, ids: Sequence[int] | None = None, project: Project | None = None,
    batch_size: int = RESET_BATCH_SIZE, actor: str = SYSTEM_SWEEP,
) -> int:
    """Reset every budget whose period has ended, in batches; returns how many were reset.

    Exactly once per period: each batch locks its rows (skipping rows another
    sweep holds), resets with `UPDATE ... WHERE id IN (...) AND period_start = old`,
    and closes the finished period under a unique (budget, period_start, period_end) constraint.
    """
    at = at or utcnow()
    total = 0
    while True:
        with transaction.atomic():
            due = UserBudget.objects.filter(next_reset_at__lte=at)
            if ids is not None:
                due = due.filter(pk__in=ids)
            if project is not None:
                due = due.filter(project=project)
            # A sweep skips rows another sweep holds; a lazy reset of one budget waits for its row.
            locked = due.select_for_update(skip_locked=ids is None, of=("self",))
            rows = _due_rows(locked, limit=batch_size)
            if not rows:
                break
            done = _reset_rows(rows, at=at, actor=actor)
        total += done
        if done == 0 or len(rows) < batch_size:
            break
    return total


def _reset_rows(rows: Iterable[_DueRow], *, at: datetime, actor: str) -> int:
    """Close the finished period of each row and move it into the period containing `at`."""
    rows = list(rows)
    if not rows:
        return 0
    groups: dict[tuple, list[_DueRow]] = defaultdict(list)
    for row in rows:
        groups[(row.timezone, row.duration, row.duration_days, row.period_start)].append(row)

    model_spend: dict[int, dict[str, str]] = defaultdict(dict)
    for budget_id, model, spend in ModelSpend.objects.filter(budget_id__in=[r.id for r in rows]).values_list(
        "budget_id", "model", "spend"
    ):
        model_spend[budget_id][model] = str(spend)

    BudgetPeriod.objects.bulk_create(
        [
            BudgetPeriod(
                budget_id=r.id, project_id=r.project_id, user_id=r.user_id, period_start=r.period_start,
                period_end=r.next_reset_at, spend=r.current_spend, total_budget=r.total_budget,
                model_spend=model_spend.get(r.id, {}), reason="lazy" if actor == SYSTEM_LAZY else "period_end",
            )
            for r in rows
        ],
        ignore_conflicts=True,
    )
    reset = 0
    audits = []
    for (tz, duration, days, old_start), members in groups.items():
        period = periods.period_containing(duration, tz, at, days=days, anchor=old_start)
        member_ids = [m.id for m in members]
        changed = UserBudget.objects.filter(pk__in=member_ids, period_start=old_start).update(
            period_start=period.start, next_reset_at=period.next_reset, current_spend=0, updated_at=at
        )
        if changed:
            ModelSpend.objects.filter(budget_id__in=member_ids).delete()
        reset += changed
        audits += [
            AuditLog(
                project_id=m.project_id, budget_id=m.id, user_id=m.user_id, action="budget_period_reset",
                actor=actor,
                before={"period_start": m.period_start.isoformat(), "current_spend": str(m.current_spend)},
                after={"period_start": period.start.isoformat(), "current_spend": "0",
                       "next_reset_at": period.next_reset.isoformat() if period.next_reset else None},
            )
            for m in members
        ] if changed == len(members) else []
    AuditLog.objects.bulk_create(audits)
    return reset


def reset_due_projects(*, at: datetime | None = None, project: Project | None = None) -> int:
    """Start a new period of project-wide spend for projects whose period has ended."""
    at = at or utcnow()
    due = Project.objects.filter(next_reset_at__lte=at)
    if project is not None:
        due = due.filter(pk=project.pk)
    reset = 0
    with transaction.atomic():
        rows = list(
            due.select_for_update(skip_locked=True).values_list(
                "id", "timezone", "duration", "duration_days", "period_start", "current_spend"
            )
        )
        for pk, tz, duration, days, old_start, spend in rows:
            period = periods.period_containing(duration, tz, at, days=days, anchor=old_start)
            # Conditional on the old start: a second sweep finds nothing to do.
            if Project.objects.filter(pk=pk, period_start=old_start).update(
                period_start=period.start, next_reset_at=period.next_reset, current_spend=0
            ):
                reset += 1
                _audit(project_id=pk, action="project_period_reset", actor=SYSTEM_SWEEP,
                       before={"period_start": old_start.isoformat(), "current_spend": str(spend)},
                       after={"period_start": period.start.isoformat()})
    return reset
