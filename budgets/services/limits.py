"""Limits: create, change (amount, mode, thresholds), delete; each change audited with its actor.

A change of a limit's amount calls alerts.limit_room_changed, so that the thresholds it fired in
this window resolve (or fire) against the new amount.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, transaction
from django.utils.timezone import now as utcnow

from ..base.errors import Conflict, InvalidInput, UnknownModel, UnknownUser, Unprocessable
from ..base.money import to_money
from ..base.validation import validate_limit_thresholds, validate_model, validate_short_identifier
from ..domain import pricing
from ..models import ApiKey, Limit, Project, Team
from ..selectors.grants import states_with_rooms
from ..selectors.limits import MAX_TAGS, CallScope, LimitState, applicable_limits, team_of
from ..selectors.teams import binding_first
from .alerts import limit_room_changed
from .audit import write_audit
from .common import validate_user_id
from .keys import api_keys_changed
from .limit_windows import limits_current, window_of
from .resets import budget_current, project_refresh


def limit_snapshot(limit: Limit) -> dict[str, Any]:
    """A limit as the audit log keeps it."""
    return {
        "id": limit.pk, "scope": limit.scope, "subject": limit.subject, "model": limit.model, "unit": limit.unit,
        "window": limit.window, "amount": str(limit.amount), "mode": limit.mode, "thresholds": limit.thresholds,
        "resets_at": limit.resets_at.isoformat() if limit.resets_at else None, "grace_percent": limit.grace_percent,
        "rollover_max": str(limit.rollover_max) if limit.rollover_max is not None else None,
    }


MAX_GRACE = 100


def validate_grace(value: Any) -> int | None:
    """A limit's grace: a whole percentage from 0 to 100 (None: none)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_GRACE:
        raise InvalidInput(f"grace_percent must be a whole percentage from 0 to {MAX_GRACE}")
    return value or None


def validate_rollover(value: Any, *, scope: str, unit: str, model: str, window: str) -> Decimal | None:
    """A limit's rollover ({"max": dollars} or None): only a dollar limit of a user or a team on every model,
    with a window (its unused part becomes the subject's grant)."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"max"}:
        raise InvalidInput('rollover must be {"max": dollars} (or null: none)')
    amount = validate_amount(value["max"], Limit.Unit.USD)
    if amount <= 0:
        raise InvalidInput("rollover's max must be more than $0")
    if scope not in (Limit.Scope.USER, Limit.Scope.TEAM) or unit != Limit.Unit.USD or model:
        raise Unprocessable("only a dollar limit of a user or a team on every model rolls over (into a grant)")
    if window == Limit.Window.LIFETIME:
        raise Unprocessable("a lifetime limit never resets: it has nothing to roll over")
    return amount


def _choice(value: Any, choices: type[Limit.Scope | Limit.Unit | Limit.Window | Limit.Mode], field: str) -> str:
    if not isinstance(value, str) or value not in choices.values:
        raise InvalidInput(f"{field} must be one of: {', '.join(choices.values)} (got {value!r})")
    return value


def validate_subject(project: Project, scope: str, subject: Any) -> str:
    """The subject a scope names: none for project, an existing team, a user id, an existing key name, a tag."""
    if scope == Limit.Scope.PROJECT:
        if subject not in (None, ""):
            raise InvalidInput("a project limit has no subject (leave it out)")
        return ""
    if subject is None or subject == "":
        raise InvalidInput(f"a {scope} limit needs a subject (the {_SUBJECT_WORDS[scope]})")
    # A subject of the right form (a string) that this scope cannot use: 422, as a missing team or key.
    try:
        if scope == Limit.Scope.USER:
            return validate_user_id(subject)
        if scope == Limit.Scope.TAG:
            return validate_short_identifier(subject, "a tag")
    except InvalidInput as exc:
        raise Unprocessable(exc.message) from None
    if not isinstance(subject, str):
        raise InvalidInput(f"subject must be a string (the {_SUBJECT_WORDS[scope]})")
    if scope == Limit.Scope.TEAM and not Team.objects.filter(project=project, name=subject).exists():
        raise Unprocessable(f"the project has no team named {subject!r} (create it with PUT /api/v1/teams/{{team}})")
    if scope == Limit.Scope.KEY and not ApiKey.objects.filter(project=project, name=subject).exists():
        raise Unprocessable(f"the project has no API key named {subject!r}")
    return subject


_SUBJECT_WORDS = {"team": "team's name", "user": "user id", "key": "API key's name", "tag": "tag"}


def resolve_limit_model(model: Any) -> str:
    """The price table's name for a limit's model (as recording resolves it); '' for every model."""
    if model is None or model == "":
        return ""
    price = pricing.find_price(validate_model(model))
    if price is None:
        raise UnknownModel(f"unknown model {model!r}: a model limit names a model of the price table")
    return price.model


def validate_amount(amount: Any, unit: str) -> Any:
    """A limit's amount: dollars (12 places at most), or a whole number of tokens or requests."""
    value = to_money(amount, "limit", exact=True)
    if unit != Limit.Unit.USD and value != value.to_integral_value():
        raise Unprocessable(f"a limit in {unit} must be a whole number (got {value})")
    return value


def limit_create(
    *, project: Project, scope: Any, subject: Any = None, model: Any = None, unit: Any = Limit.Unit.USD,
    window: Any = Limit.Window.MONTH, amount: Any, mode: Any = Limit.Mode.HARD, thresholds: Any = None,
    grace_percent: Any = None, rollover: Any = None, actor: str, at: datetime | None = None,
) -> Limit:
    """A new limit in its current window with nothing used; Conflict naming the limit that already has
    the same scope, subject, model, unit and window."""
    scope = _choice(scope, Limit.Scope, "scope")
    unit = _choice(unit, Limit.Unit, "unit")
    window = _choice(window, Limit.Window, "window")
    mode = _choice(mode, Limit.Mode, "mode")
    value = validate_amount(amount, unit)
    own_thresholds = validate_limit_thresholds(thresholds)
    subject = validate_subject(project, scope, subject)
    model = resolve_limit_model(model)
    grace = validate_grace(grace_percent)
    rollover_max = validate_rollover(rollover, scope=scope, unit=unit, model=model, window=window)
    at = at or utcnow()
    window_start, resets_at = window_of(window, project, at)
    key = {"project": project, "scope": scope, "subject": subject, "model": model, "unit": unit, "window": window}
    with transaction.atomic():
        if own_thresholds is not None:
            _lock_project(project.pk)  # Project.limit_thresholds changes: one writer at a time
        existing = Limit.objects.filter(**key).values_list("pk", flat=True).first()
        if existing is None:
            try:
                with transaction.atomic():
                    limit = Limit.objects.create(**key, amount=value, mode=mode, thresholds=own_thresholds,
                                                 grace_percent=grace, rollover_max=rollover_max,
                                                 window_start=window_start, resets_at=resets_at, created_at=at,
                                                 updated_at=at)
            except IntegrityError:  # created concurrently
                existing = Limit.objects.filter(**key).values_list("pk", flat=True).first()
        if existing is not None:
            raise Conflict(f"limit {existing} already has this scope, subject, model, unit and window: "
                           f"change it with PATCH /api/v1/limits/{existing}")
        write_audit(project_id=project.pk, action="limit_create", actor=actor,
                    user_id=subject if scope == Limit.Scope.USER else "", after=limit_snapshot(limit))
        if own_thresholds is not None:
            _thresholds_in_use_sync(project.pk)
    return limit


def limit_update(*, limit: Limit, amount: Any = None, mode: Any = None, thresholds: Any = ...,
                 grace_percent: Any = ..., rollover: Any = ..., actor: str, at: datetime | None = None) -> Limit:
    """Change a limit's amount, mode or own thresholds (None: the project's again; another scope, subject,
    unit or window is another limit). A new amount re-checks the thresholds fired in this window
    (alerts.limit_room_changed: `resolved` when the usage is now under one)."""
    fields: dict[str, Any] = {}
    if amount is not None:
        fields["amount"] = validate_amount(amount, limit.unit)
    if mode is not None:
        fields["mode"] = _choice(mode, Limit.Mode, "mode")
    if thresholds is not ...:
        fields["thresholds"] = validate_limit_thresholds(thresholds)
    if grace_percent is not ...:
        fields["grace_percent"] = validate_grace(grace_percent)
    if rollover is not ...:
        fields["rollover_max"] = validate_rollover(rollover, scope=limit.scope, unit=limit.unit, model=limit.model,
                                                   window=limit.window)
    if not fields:
        raise InvalidInput("give the limit's new amount (`limit`), `mode`, `thresholds`, `grace_percent` or "
                           "`rollover`")
    with transaction.atomic():
        project = _lock_project(limit.project_id)  # the lock order: the project, then the limit
        locked = Limit.objects.select_for_update().get(pk=limit.pk)
        before = limit_snapshot(locked)
        Limit.objects.filter(pk=locked.pk).update(**fields, updated_at=at or utcnow())
        locked.refresh_from_db()
        write_audit(project_id=locked.project_id, action="limit_update", actor=actor,
                    user_id=locked.subject if locked.scope == Limit.Scope.USER else "",
                    before=before, after=limit_snapshot(locked))
        if "thresholds" in fields and fields["thresholds"] != before["thresholds"]:
            _thresholds_in_use_sync(locked.project_id)
        if locked.amount != Decimal(before["amount"]):
            limit_room_changed(project, [locked.pk], at=at)
    return locked


def limit_delete(*, limit: Limit, actor: str) -> None:
    """Delete a limit; its calls stay in the ledger."""
    with transaction.atomic():
        if limit.thresholds is not None:
            _lock_project(limit.project_id)
        write_audit(project_id=limit.project_id, action="limit_delete", actor=actor,
                    user_id=limit.subject if limit.scope == Limit.Scope.USER else "", before=limit_snapshot(limit))
        Limit.objects.filter(pk=limit.pk).delete()
        if limit.thresholds is not None:
            _thresholds_in_use_sync(limit.project_id)


def _lock_project(project_id: int) -> Project:
    """The project's row, locked as writers lock it (FOR NO KEY UPDATE): limits' threshold changes take
    turns, so each sees the others' lists when it sums them up."""
    return Project.objects.select_for_update(no_key=True).get(pk=project_id)


def _thresholds_in_use_sync(project_id: int) -> None:
    """Keep Project.limit_thresholds the union of the project's limits' own thresholds (what a record
    checks before it reads a limit's own list); processes that cached the project learn it at once.
    The caller holds the project's lock."""
    lists = Limit.objects.filter(project_id=project_id, thresholds__isnull=False).values_list("thresholds", flat=True)
    union = sorted({t for own in lists if isinstance(own, list) for t in own if isinstance(t, int)})
    current = Project.objects.filter(pk=project_id).values_list("limit_thresholds", flat=True).first()
    if current != union:
        Project.objects.filter(pk=project_id).update(limit_thresholds=union)
        transaction.on_commit(api_keys_changed)  # API keys cache their project's row


@dataclass(frozen=True)
class UserLimits:
    user_id: str
    team: str | None
    items: list[LimitState]


def limits_for_user(
    *, project: Project, user_id: str, model: str | None = None, tags: tuple[str, ...] = (),
    key_name: str | None = None, at: datetime | None = None,
) -> UserLimits:
    """Every limit that applies to the user's calls (with `model`, `tags`, through the key `key_name`), each
    in its current window, the binding one first: the user's budget and the project's cap (as limits with
    id None) and the project's limits that count such a call."""
    user_id = validate_user_id(user_id)
    tags = tuple(sorted({validate_short_identifier(tag, "a tag") for tag in tags}))
    if len(tags) > MAX_TAGS:
        raise InvalidInput(f"at most {MAX_TAGS} tags")
    resolved = ""
    if model:
        price = pricing.find_price(validate_model(model))
        resolved = price.model if price is not None else model
    states: list[LimitState] = []
    try:
        budget = budget_current(project=project, user_id=user_id, at=at).budget
    except UnknownUser:
        current_project = project_refresh(project, at)
    else:
        current_project = budget.project
        states.append(LimitState.of_budget(budget))
    cap = LimitState.of_project(current_project)
    if cap is not None:
        states.append(cap)
    team = team_of(project, user_id)
    call = CallScope(project=project, user_id=user_id, model=resolved, key_name=key_name, tags=tags, team=team)
    states += [LimitState.of_limit(limit) for limit in limits_current(project, applicable_limits(call), at)]
    states = states_with_rooms(project.pk, states, at or utcnow())
    return UserLimits(user_id=user_id, team=team, items=binding_first(states))
