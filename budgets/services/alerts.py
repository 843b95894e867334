"""Budget alerts: spend thresholds crossed, kept as rows (an outbox), delivered by tasks.

`spend_recorded` runs inside services.cost_record's transaction: when the recorded
amount carries a user's or the project's spend across a threshold (a percentage of
the budget), it inserts one Alert row per threshold per period (the unique
constraint makes it once under concurrency too) and queues the delivery when the
transaction commits, on a background publisher thread with a bounded backlog, so a broker
that hangs never holds the request. Queueing never fails the cost recording: with the broker down
the row stays undelivered and `alerts_requeue` (the outbox sweep, every minute on
beat) queues it again later.

`alert_deliver` sends one alert: a signed webhook POST and/or an email. It first
claims the row with a conditional update, so two workers never both send it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import http.client
import ipaddress
import logging
import os
import queue
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Annotated, Any, Literal, cast
from urllib.parse import urlsplit

from celery import current_app
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.urls import reverse
from django.utils.timezone import now as utcnow
from pydantic import BaseModel, WithJsonSchema, model_validator

from ..base.errors import InvalidInput
from ..domain.codec import dumps
from ..domain.slack import slack_message
from ..models import Alert, Limit, LimitRequest, Project, UserBudget
from ..selectors.grants import states_with_rooms
from ..selectors.limits import LimitState
from .audit import write_audit
from .limit_windows import limits_current

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
RETRY_BASE_SECONDS = 30  # then 60, 120, 240: about 7.5 minutes from the first try to the last
CLAIM_SECONDS = 120  # a claimed delivery's lease: longer than the webhook and email timeouts
WEBHOOK_TIMEOUT = 5
OUTBOX_AGE = timedelta(minutes=1)  # a fresh alert gets its on-commit delivery first
OUTBOX_BATCH = 500
OUTBOX_EXPIRES = 300  # a re-queued delivery still waiting after this is dropped (the next sweep re-queues it)

DELIVER_ALERT_TASK = "budgets.deliver_alert"  # budgets.tasks.deliver_alert

SIGNATURE_HEADER = "X-Budget-Signature"
TIMESTAMP_HEADER = "X-Budget-Timestamp"
ALERT_ID_HEADER = "X-Budget-Alert-Id"


# --- crossing a threshold (inside cost_record's transaction) ---------------------------------


def _whole_percentages(raw: Any) -> list[int]:
    """Positive whole percentages, sorted, each once; junk typed into the admin is ignored."""
    values = raw if isinstance(raw, list | tuple) else []
    return sorted({t for t in values if isinstance(t, int) and not isinstance(t, bool) and t > 0})


def thresholds_of(project: Project) -> list[int]:
    """The project's thresholds as whole percentages; junk typed into the admin is ignored."""
    return _whole_percentages(project.alert_thresholds)


def crossed_thresholds(*, before: Decimal, after: Decimal, limit: Decimal | None, thresholds: list[int]) -> list[int]:
    """Thresholds t with before < t% of limit <= after (none for a missing or zero limit)."""
    if limit is None or limit <= 0:
        return []
    return [t for t in thresholds if before < limit * t / 100 <= after]


def spend_recorded(*, project: Project, budget: UserBudget, amount: Decimal) -> list[Alert]:
    """Called by cost_record after `amount` was added (budget and project hold the new spend).

    Returns the alerts this call created; the common case (nothing crossed) costs no query.
    """
    thresholds = thresholds_of(project)
    if amount <= 0 or not thresholds:
        return []
    candidates = [
        Alert(project=project, budget=budget, scope=Alert.Scope.USER, user_id=budget.user_id, threshold=t,
              period_start=budget.period_start, spend=budget.current_spend, limit=budget.total_budget)
        for t in crossed_thresholds(before=budget.current_spend - amount, after=budget.current_spend,
                                    limit=budget.total_budget, thresholds=thresholds)
    ]
    candidates += [
        Alert(project=project, budget=None, scope=Alert.Scope.PROJECT, user_id="", threshold=t,
              period_start=project.period_start, spend=project.current_spend,
              limit=cast(Decimal, project.max_budget))  # not None: crossed_thresholds yields none then
        for t in crossed_thresholds(before=project.current_spend - amount, after=project.current_spend,
                                    limit=project.max_budget, thresholds=thresholds)
    ]
    return alerts_insert(project, candidates)


def limit_alert(project: Project, state: LimitState, *, kind: str, threshold: int, window_start: datetime,
                cycle: int = 0, details: dict[str, Any] | None = None) -> Alert:
    """An (unsaved) alert row about a limit, with its figures now."""
    return Alert(project=project, budget=None, scope=Alert.Scope.LIMIT, kind=kind, source_limit_id=state.id,
                 user_id=state.subject if state.scope == "user" else "", threshold=threshold,
                 period_start=window_start, cycle=cycle, spend=state.used, limit=state.limit, details=details or {})


def limits_counted(*, project: Project, counted: Sequence[tuple[LimitState, Decimal, datetime]]) -> list[Alert]:
    """Called by services.ledger after Limit rows counted a call or a merge: `counted` holds each
    limit's state after it, what it added and its window's start. One alert row per threshold of the
    limit's own list (else the project's) that its `used` crossed: once per window, and once more
    after each `resolved` (limit_room_changed); hard and soft limits alike.

    The common case (nothing crossed) costs no query: the crossing is first checked against every
    threshold in use in the project (its list and Project.limit_thresholds); only a limit that
    crossed one has its own list read (when any limit has one) and its window's resolutions counted.
    """
    in_use = sorted(set(thresholds_of(project)) | set(_whole_percentages(project.limit_thresholds)))
    if not in_use:
        return []
    crossing = [
        (state, window_start, crossed)
        for state, added, window_start in counted if added > 0 and state.id is not None
        if (crossed := crossed_thresholds(before=state.used - added, after=state.used, limit=state.capacity,
                                          thresholds=in_use))
    ]
    if not crossing:
        return []
    own: dict[int, list[int] | None] = {}
    if project.limit_thresholds:
        own = {pk: None if raw is None else _whole_percentages(raw) for pk, raw in
               Limit.objects.filter(pk__in=[state.id for state, _, _ in crossing]).values_list("pk", "thresholds")}
    project_list = thresholds_of(project)

    def listed(limit_id: int) -> list[int]:
        mine = own.get(limit_id)
        return project_list if mine is None else mine

    fired = [(state, window_start, t) for state, window_start, crossed in crossing
             for t in crossed if t in listed(cast(int, state.id))]
    if not fired:
        return []
    resolved = _resolutions({(cast(int, state.id), window_start) for state, window_start, _ in fired})
    return alerts_insert(project, [
        limit_alert(project, state, kind=Alert.Kind.THRESHOLD, threshold=t, window_start=window_start,
                    cycle=len(resolved.get((cast(int, state.id), window_start, t), ())))
        for state, window_start, t in fired])


def _limit_events(windows: set[tuple[int, datetime]],
                  kinds: Sequence[str]) -> list[tuple[int, datetime, int, str, int]]:
    """(limit id, window start, threshold, kind, cycle) of the limits' alerts of these kinds in these windows."""
    if not windows:
        return []
    where = Q()
    for limit_id, window_start in windows:
        where |= Q(source_limit_id=limit_id, period_start=window_start)
    return list(Alert.objects.filter(where, kind__in=kinds)
                .values_list("source_limit_id", "period_start", "threshold", "kind", "cycle"))


def _resolutions(windows: set[tuple[int, datetime]]) -> dict[tuple[int, datetime, int], set[int]]:
    """The cycles each (limit, window, threshold) was resolved in."""
    found: dict[tuple[int, datetime, int], set[int]] = {}
    for limit_id, start, threshold, _, cycle in _limit_events(windows, [Alert.Kind.RESOLVED]):
        found.setdefault((limit_id, start, threshold), set()).add(cycle)
    return found


def limit_room_changed(project: Project, limit_ids: Sequence[int], *, at: datetime | None = None) -> list[Alert]:
    """Re-check the thresholds of limits whose room changed (a new amount, a temporary raise, a grant,
    an approval): a threshold that fired in the current window and that usage is now under gets a
    `resolved` event (after which crossing it fires again); one that usage is now at or over without
    an open firing (the room shrank) fires. Call it inside the transaction that changed the room.

    Locks the limits by id (services.admission's order after the project) and brings them into
    their current windows; returns the alerts created.
    """
    if not limit_ids:
        return []
    with transaction.atomic():
        rows = list(Limit.objects.select_for_update().filter(project=project, pk__in=limit_ids).order_by("pk"))
        limits = limits_current(project, rows, at)
        events = _limit_events({(limit.pk, limit.window_start) for limit in limits},
                               [Alert.Kind.THRESHOLD, Alert.Kind.RESOLVED])
        fired: dict[tuple[int, int], set[int]] = {}
        resolved: dict[tuple[int, int], set[int]] = {}
        for limit_id, _start, threshold, kind, cycle in events:
            (fired if kind == Alert.Kind.THRESHOLD else resolved).setdefault((limit_id, threshold), set()).add(cycle)
        project_list = thresholds_of(project)
        candidates = []
        states = states_with_rooms(project.pk, [LimitState.of_limit(limit) for limit in limits], at or utcnow())
        for limit, state in zip(limits, states, strict=True):
            own = project_list if state.thresholds is None else _whole_percentages(state.thresholds)
            seen = {t for limit_id, t in fired if limit_id == limit.pk}
            for t in sorted(seen | set(own)):
                level = state.capacity * t / 100  # the effective limit (amount + temporary raises) and grants
                done = resolved.get((limit.pk, t), set())
                open_cycles = fired.get((limit.pk, t), set()) - done
                if open_cycles and limit.used < level:
                    candidates.append(limit_alert(project, state, kind=Alert.Kind.RESOLVED, threshold=t,
                                                  window_start=limit.window_start, cycle=max(open_cycles)))
                elif not open_cycles and t in own and state.capacity > 0 and limit.used >= level:
                    candidates.append(limit_alert(project, state, kind=Alert.Kind.THRESHOLD, threshold=t,
                                                  window_start=limit.window_start, cycle=len(done)))
        return alerts_insert(project, candidates)


def alerts_insert(project: Project, candidates: list[Alert]) -> list[Alert]:
    """Insert the alert rows not there yet (each in a savepoint) and queue their delivery at commit."""
    if not candidates:
        return []
    deliverable = has_channel(project)
    created = []
    for alert in candidates:
        if not deliverable:
            # Nothing to send it to: the row is the record (admin, console), not a pending delivery.
            alert.delivered_at = utcnow()
        try:
            with transaction.atomic():  # a savepoint: a duplicate must not break cost_record's transaction
                alert.save(force_insert=True)
        except IntegrityError:
            continue  # this event was already raised (maybe concurrently)
        created.append(alert)
        if deliverable:
            transaction.on_commit(partial(queue_delivery, alert.pk), robust=True)
    return created


def has_channel(project: Project) -> bool:
    return bool(project.alert_webhook_url or project.slack_webhook_url or project.alert_email)


PUBLISH_BACKLOG = 1000  # deliveries waiting for the publisher thread; past it, the outbox sweep queues them


class _Publisher:
    """One daemon thread per process that hands deliveries to the broker, behind a bounded backlog.

    A request queues its alerts on commit; a broker that accepts connections but never answers
    would otherwise hold that request for the socket timeouts and retries (5-15 s). The thread is
    made lazily and again after a fork (gunicorn --preload, Celery prefork children).
    """

    def __init__(self, backlog: int) -> None:
        self.backlog = backlog
        self.lock = threading.Lock()
        self.pid = 0
        self.jobs: queue.Queue[tuple[int, dict[str, Any], contextvars.Context]] = queue.Queue(backlog)
        self.thread: threading.Thread | None = None

    def submit(self, alert_id: int, options: dict[str, Any]) -> bool:
        with self.lock:
            if self.pid != os.getpid() or self.thread is None or not self.thread.is_alive():
                if self.pid != os.getpid():
                    self.jobs = queue.Queue(self.backlog)  # a forked child: the parent's thread is gone
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, name="alert-publisher", daemon=True)
                self.thread.start()
        try:
            # The request's context goes along: its request id on the log lines, and its trace (when
            # tracing is on) as the parent of the publish, so the worker's delivery joins that trace.
            self.jobs.put_nowait((alert_id, options, contextvars.copy_context()))
        except queue.Full:
            return False
        return True

    def _run(self) -> None:
        jobs = self.jobs
        while True:
            alert_id, options, context = jobs.get()
            try:
                context.run(_publish, alert_id, options)
            finally:
                jobs.task_done()

    def wait_until_idle(self, timeout: float) -> bool:
        """For tests and shutdown: wait until every submitted delivery was tried; False on timeout."""
        deadline = time.monotonic() + timeout
        with self.jobs.all_tasks_done:
            while self.jobs.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.jobs.all_tasks_done.wait(left)
        return True


publisher = _Publisher(PUBLISH_BACKLOG)


def _publish(alert_id: int, options: dict[str, Any]) -> bool:
    try:
        current_app.send_task(DELIVER_ALERT_TASK, args=[alert_id], **options)
    except Exception as exc:
        # Never let a broker outage fail the request that recorded the cost: the outbox re-queues it.
        # One line, no traceback: an outage would otherwise log one per recorded cost.
        logger.warning("could not queue the delivery of alert %s (%s: %s); the outbox sweep will queue it again",
                       alert_id, type(exc).__name__, exc)
        return False
    return True


def queue_delivery(alert_id: int, *, wait: bool = False, **options: Any) -> bool:
    """Queue the delivery task by name (services never import tasks).

    By default (on commit, inside a request) the publish happens on the publisher thread and this
    returns at once: True when it was taken into the backlog, False when the backlog is full (the
    alert stays in the outbox). With `wait=True` (the outbox sweep, in a worker) it publishes here
    and returns False when the broker can't take it.
    """
    if wait:
        return _publish(alert_id, options)
    if publisher.submit(alert_id, options):
        return True
    logger.warning("could not queue the delivery of alert %s (the publish backlog of %s is full); "
                   "the outbox sweep will queue it again", alert_id, PUBLISH_BACKLOG)
    return False


# --- the outbox sweep -----------------------------------------------------------------------


def alerts_requeue(*, at: datetime | None = None, limit: int = OUTBOX_BATCH) -> int:
    """Queue undelivered alerts older than a minute that no delivery holds; returns how many."""
    at = at or utcnow()
    pending = (
        Alert.objects.filter(delivered_at__isnull=True, attempts__lt=MAX_ATTEMPTS, created_at__lte=at - OUTBOX_AGE)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=at))
        .order_by("created_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
    queued = 0
    for alert_id in pending:
        if not queue_delivery(alert_id, wait=True, expires=OUTBOX_EXPIRES):
            break  # the broker is down again: the next sweep tries
        queued += 1
    return queued


def alert_retry(*, alert: Alert, actor: str) -> bool:
    """Give an undelivered alert a fresh set of attempts and queue it (admin action); audited."""
    with transaction.atomic():
        changed = Alert.objects.filter(pk=alert.pk, delivered_at__isnull=True).update(
            attempts=0, next_attempt_at=None, last_error="")
        if changed:
            write_audit(
                project_id=alert.project_id, budget_id=alert.budget_id, user_id=alert.user_id,
                action="alert_retry", actor=actor,
                before={"attempts": alert.attempts, "last_error": alert.last_error}, after={"attempts": 0},
            )
            transaction.on_commit(partial(queue_delivery, alert.pk), robust=True)
    alert.refresh_from_db()
    return bool(changed)


# --- delivery -------------------------------------------------------------------------------


class DeliveryFailed(Exception):
    """A channel did not take the alert (the message says why)."""


@dataclass(frozen=True)
class Delivery:
    status: str  # "delivered", "failed" (retry_in says when; None: gave up) or "skipped"
    retry_in: float | None = None
    error: str = ""


def backoff(attempt: int) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): 30, 60, 120, ..."""
    return RETRY_BASE_SECONDS * 2 ** (attempt - 1)


def _targets(project: Project) -> list[tuple[str, Callable[[Alert, Project], None]]]:
    """The HTTP targets an alert goes to, each with the Alert column that records it took the alert."""
    targets: list[tuple[str, Callable[[Alert, Project], None]]] = []
    if project.alert_webhook_url:
        targets.append(("webhook_sent_at", webhook_send))
    if project.slack_webhook_url:
        targets.append(("slack_sent_at", slack_send))
    return targets


def alert_deliver(*, alert_id: int) -> Delivery:
    """Claim and send one alert; records attempts, last_error and delivered_at on the row.

    Each target (the signed webhook, Slack) that takes the alert is marked on the row at once, so
    a retry after another target failed sends only to the ones still missing it. The email goes
    last, when every HTTP target has the alert.
    """
    at = utcnow()
    alert = Alert.objects.select_related("project").filter(pk=alert_id).first()
    if alert is None or alert.delivered_at is not None or alert.attempts >= MAX_ATTEMPTS:
        return Delivery("skipped")
    # The claim: only the caller whose update matches the attempts it read sends, and only
    # when no other delivery holds the lease or waits out a backoff.
    claimed = (
        Alert.objects.filter(pk=alert.pk, delivered_at__isnull=True, attempts=alert.attempts)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=at))
        .update(attempts=F("attempts") + 1, next_attempt_at=at + timedelta(seconds=CLAIM_SECONDS))
    )
    if not claimed:
        return Delivery("skipped")
    attempt = alert.attempts + 1
    project = alert.project
    targets = _targets(project)
    failures: list[str] = []
    for sent_at, send in targets:
        if getattr(alert, sent_at) is not None:
            continue  # took it on an earlier attempt
        try:
            send(alert, project)
        except DeliveryFailed as exc:
            failures.append(str(exc))
            continue
        Alert.objects.filter(pk=alert.pk).update(**{sent_at: utcnow()})
    email_note = ""
    if not failures and project.alert_email:
        try:
            email_send(alert, project)
        except DeliveryFailed as exc:
            if targets:
                # A webhook went out: retrying would send it twice, so the email is best effort.
                email_note = f"email not sent: {exc}"
                logger.warning("alert %s: %s", alert.pk, email_note)
            else:
                failures.append(str(exc))
    if failures:
        error = "; ".join(failures)[:2000]
        retry_in = backoff(attempt) if attempt < MAX_ATTEMPTS else None
        next_at = utcnow() + timedelta(seconds=retry_in) if retry_in is not None else None
        Alert.objects.filter(pk=alert.pk).update(last_error=error, next_attempt_at=next_at)
        logger.warning("alert %s: delivery attempt %s of %s failed: %s", alert.pk, attempt, MAX_ATTEMPTS, error)
        return Delivery("failed", retry_in=retry_in, error=error)
    Alert.objects.filter(pk=alert.pk).update(delivered_at=utcnow(), next_attempt_at=None, last_error=email_note)
    return Delivery("delivered")


Money = Annotated[Decimal, WithJsonSchema({"type": "number"})]

# The webhook's `type` per alert kind.
ALERT_TYPES: dict[str, str] = {
    Alert.Kind.THRESHOLD: "budget.threshold_crossed",
    Alert.Kind.RESOLVED: "budget.threshold_resolved",
    Alert.Kind.FORECAST: "budget.forecast_over_limit",
    Alert.Kind.ANOMALY: "budget.spend_anomaly",
    Alert.Kind.LIMIT_REQUEST: "budget.limit_request",
    Alert.Kind.LIMIT_REQUEST_DECIDED: "budget.limit_request_decided",
}
# A limit request's events (services.limit_requests): their webhook body has the request (`request`).
REQUEST_KINDS = (Alert.Kind.LIMIT_REQUEST, Alert.Kind.LIMIT_REQUEST_DECIDED)


class LimitRequestFields(BaseModel):
    """A limit request's one shape: the API's LimitRequestOut and the `request` of its webhook events
    (validated from the row, or from the snapshot an event keeps); money as exact JSON numbers."""

    id: int
    status: Literal["pending", "approved", "denied"]
    user: str
    limit_id: int
    amount: Money
    reason: str
    until: datetime | None
    requested_by: str
    created_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None
    decision: Literal["raise", "permanent"] | None = None
    note: str | None = None
    increase_id: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, row: Any) -> Any:
        if not isinstance(row, LimitRequest):
            return row
        return {"id": row.pk, "status": row.status, "user": row.user_id, "limit_id": row.limit_id,
                "amount": row.amount, "reason": row.reason, "until": row.until, "requested_by": row.requested_by,
                "created_at": row.created_at, "decided_by": row.decided_by or None, "decided_at": row.decided_at,
                "decision": row.decision or None, "note": row.note or None, "increase_id": row.increase_id}


def limit_request_event(request: LimitRequest, kind: str) -> Alert | None:
    """A request's event (Alert.Kind.LIMIT_REQUEST when made, LIMIT_REQUEST_DECIDED when decided) into the
    outbox, with the request as it is now; once per request and kind. Inside the caller's transaction."""
    limit = request.limit
    alert = Alert(project_id=request.project_id, kind=kind, limit_request=request, source_limit=limit,
                  scope=Alert.Scope.LIMIT, user_id=request.user_id, threshold=0,
                  period_start=limit.window_start, spend=limit.used, limit=limit.amount + limit.raised,
                  details=LimitRequestFields.model_validate(request).model_dump(mode="json"),
                  created_at=request.decided_at or request.created_at)
    created = alerts_insert(request.project, [alert])
    return created[0] if created else None


class AlertFields(BaseModel):
    """An alert's one shape: the webhook's body (with its type, id and project) and, with its id and
    delivery, the API's AlertOut. Validated from the Alert row; money as exact JSON numbers."""

    kind: Literal["threshold", "resolved", "forecast", "anomaly", "limit_request",
                  "limit_request_decided"] = "threshold"
    scope: Literal["user", "project", "limit", "team"]
    user: str | None
    threshold: int
    spend: Money
    limit: Money
    period_start: datetime
    created_at: datetime
    # Scope "limit": which limit (its id, level, subject, model, unit and window); null otherwise.
    limit_id: int | None = None
    limit_scope: str | None = None
    subject: str | None = None
    model: str | None = None
    unit: str | None = None
    window: str | None = None
    # Kind "forecast": usage forecast at the window's end. Kind "anomaly": today's spend (`spend`)
    # against `multiple` × the trailing daily average (`baseline` over `baseline_days`; `limit` is
    # the larger of that and the project's floor), and the model that spent most today.
    forecast: Money | None = None
    baseline: Money | None = None
    baseline_days: int | None = None
    multiple: Money | None = None
    top_model: str | None = None
    top_model_spend: Money | None = None
    # Kinds limit_request*: the request as it was at that moment (threshold is 0).
    request: LimitRequestFields | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_row(cls, row: Any) -> Any:
        if not isinstance(row, Alert):
            return row
        # A project-wide alert has no user: "" in the row, null in the answer.
        fields = {name: (row.user_id or None) if name == "user" else getattr(row, name)
                  for name in cls.model_fields if name not in _LIMIT_FIELDS and name not in _DETAIL_FIELDS
                  and name != "request"}
        fields["request"] = row.details if row.limit_request_id is not None else None
        limit = row.source_limit if row.source_limit_id is not None else None
        if limit is not None:
            fields.update(limit_id=limit.pk, limit_scope=limit.scope, subject=limit.subject, model=limit.model or None,
                          unit=limit.unit, window=limit.window)
        elif row.subject:
            fields["subject"] = row.subject
        details = row.details if isinstance(row.details, dict) else {}
        fields.update({name: details[name] for name in _DETAIL_FIELDS if details.get(name) is not None})
        return fields


_LIMIT_FIELDS = ("limit_id", "limit_scope", "subject", "model", "unit", "window")
_DETAIL_FIELDS = ("forecast", "baseline", "baseline_days", "multiple", "top_model", "top_model_spend")


def alert_payload(alert: Alert) -> dict[str, Any]:
    """The webhook's JSON body: the alert's fields, those of a limit only for a limit's alert and the
    figures of a forecast or an anomaly only for those kinds."""
    fields = AlertFields.model_validate(alert).model_dump()
    request = fields.pop("request")
    if alert.kind in REQUEST_KINDS:
        kind = fields.pop("kind")
        return {"type": ALERT_TYPES[kind], "alert_id": alert.pk, "project": alert.project.name,
                "message": request_message(kind, request, fields), "scope": "limit", "user": fields["user"],
                "limit_id": fields["limit_id"], "limit_scope": fields["limit_scope"], "subject": fields["subject"],
                "model": fields["model"], "unit": fields["unit"], "window": fields["window"],
                "spend": fields["spend"], "limit": fields["limit"], "created_at": fields["created_at"],
                "request": request}
    if fields["limit_id"] is None:  # a budget's or the project's alert: the shape it always had
        fields = {name: value for name, value in fields.items()
                  if name not in _LIMIT_FIELDS or (name == "subject" and value is not None)}
    fields = {name: value for name, value in fields.items() if name not in _DETAIL_FIELDS or value is not None}
    return {"type": ALERT_TYPES.get(alert.kind, "budget.alert"), "alert_id": alert.pk, "project": alert.project.name,
            **fields}


def request_message(kind: str, request: dict[str, Any], fields: dict[str, Any]) -> str:
    """A request's event in words: "key:bm_x asks 5 usd more for user 'alice' on limit 3 (user alice, month)"."""
    amount = f"{request['amount']} {fields['unit'] or 'usd'}"
    limit = f"limit {fields['limit_id']} ({fields['limit_scope']} {fields['subject'] or ''}".rstrip() + \
        f", {fields['window']})"
    if kind == Alert.Kind.LIMIT_REQUEST:
        said = f": {request['reason']}" if request["reason"] else ""
        return f"{request['requested_by']} asks {amount} more for user {request['user']!r} on {limit}{said}"
    verb = {"approved": "approved", "denied": "denied"}.get(request["status"], request["status"])
    how = {"raise": " as a temporary raise", "permanent": " as a new amount"}.get(request["decision"] or "", "")
    note = f": {request['note']}" if request["note"] else ""
    return f"{request['decided_by']} {verb} request {request['id']} ({amount} for user {request['user']!r} " \
           f"on {limit}){how}{note}"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of `<timestamp>.<raw body>` with the project's webhook secret."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, headers: dict[str, str], body: bytes, *, tolerance: int = 300) -> bool:
    """What a receiver does (see docs/operations.md): check the signature and the timestamp's age."""
    timestamp = headers.get(TIMESTAMP_HEADER, "")
    given = headers.get(SIGNATURE_HEADER, "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
        return False
    return hmac.compare_digest(given, "sha256=" + signature(secret, timestamp, body))


def webhook_request(alert: Alert, project: Project, *, timestamp: int | None = None) -> urllib.request.Request:
    body = dumps(alert_payload(alert)).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "budget-manager-alerts/1",
        TIMESTAMP_HEADER: stamp,
        SIGNATURE_HEADER: "sha256=" + signature(project.webhook_secret, stamp, body),
        ALERT_ID_HEADER: str(alert.pk),  # receivers deduplicate retries with it
    }
    return urllib.request.Request(project.alert_webhook_url, data=body, headers=headers, method="POST")


# --- where a webhook may go ---------------------------------------------------------------------
# A webhook URL is typed by a project manager and fetched by our servers: without a check it
# reaches the cloud metadata service (169.254.169.254), localhost or the private network (SSRF).
# Only http(s); unless ALERT_WEBHOOK_ALLOW_PRIVATE (on-premise receivers), only public
# addresses — checked when the URL is saved and again at send time, on the addresses DNS gives
# then, and the connection goes to the address that was checked (no DNS rebinding).

WEBHOOK_SCHEMES = ("http", "https")


def _allow_private() -> bool:
    return bool(getattr(settings, "ALERT_WEBHOOK_ALLOW_PRIVATE", False))


_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052; a packet to it goes to the IPv4 in its last 32 bits
_LOCAL_NAT64 = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215: a network's own translator
_SITE_LOCAL = ipaddress.IPv6Network("fec0::/10")  # deprecated, still routed inside some networks
_ISATAP_IDS = (0x00005EFE, 0x02005EFE)  # the interface id's upper half around an IPv4 (RFC 5214)


def _wrapped_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries, in every form a host or a router may unwrap."""
    value = int(ip)
    low32 = ipaddress.IPv4Address(value & 0xFFFFFFFF)
    found = []
    if value >> 32 == 0 or value >> 32 == 0xFFFF or value >> 32 == 0xFFFF0000:
        found.append(low32)  # IPv4-compatible ::a.b.c.d, mapped ::ffff:a.b.c.d, translated ::ffff:0:a.b.c.d
    if ip in _NAT64:
        found.append(low32)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)  # (server, client)
    if (value >> 32) & 0xFFFFFFFF in _ISATAP_IDS:
        found.append(low32)
    return found


def forbidden_address(address: str) -> bool:
    """Loopback, link-local (cloud metadata), private, multicast, reserved: anything not public.

    An IPv6 address is refused too when it is site-local or local NAT64, or when it wraps an
    IPv4 address that would be refused (compatible, mapped, translated, NAT64, 6to4, Teredo, ISATAP).
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL or ip in _LOCAL_NAT64:
            return True
        wrapped = _wrapped_ipv4(ip)
        if any(v4.is_multicast or not v4.is_global for v4 in wrapped):
            return True
        if ip.ipv4_mapped is not None:
            return False  # a socket sends it as IPv4: judged by that IPv4 alone
        if int(ip) >> 32 in (0, 0xFFFF0000):
            return True  # IPv4-compatible (deprecated) and translated forms: no public receiver uses them
    return ip.is_multicast or not ip.is_global


def _target(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a webhook URL; InvalidInput unless http(s) with a host."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise InvalidInput("the webhook URL is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in WEBHOOK_SCHEMES or not parts.hostname:
        raise InvalidInput("the webhook URL must be an http:// or https:// URL with a host")
    return scheme, parts.hostname, port or (443 if scheme == "https" else 80)


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def webhook_address(url: str) -> str | None:
    """The address to connect to for `url`, after the checks; None when private targets are allowed.

    Raises InvalidInput for a URL that is not http(s) or that resolves to a forbidden address,
    OSError when the name does not resolve.
    """
    _, host, port = _target(url)
    if _allow_private():
        return None
    addresses = _resolve(host, port)
    refused = [address for address in addresses if forbidden_address(address)]
    if refused or not addresses:
        raise InvalidInput(f"the webhook URL must point to a public address ({host} is {', '.join(refused)}); "
                           "set ALERT_WEBHOOK_ALLOW_PRIVATE=true for receivers on your own network")
    return addresses[0]


def validate_webhook_url(url: Any) -> str:
    """The saved-time check: http(s), and (unless allowed) no private, loopback or link-local target."""
    if url in (None, ""):
        return ""
    if not isinstance(url, str) or len(url) > 500:
        raise InvalidInput("the webhook URL must be a string of at most 500 characters")
    try:
        webhook_address(url)
    except OSError:
        pass  # a name that does not resolve yet: send time checks it again, on what it resolves to then
    return url


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand, not to whatever the host name resolves to now."""

    def __init__(self, host: str, port: int, *, address: str | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address or self.host, self.port), self.timeout)


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, *, address: str | None, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        sock = socket.create_connection((self.address or self.host, self.port), self.timeout)
        # The certificate is checked against the host name, as with a direct connection.
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class WebhookAnswer:
    status: int
    headers: dict[str, str]
    body: bytes  # the first `read_bytes` of it


def webhook_post(url: str, body: bytes, headers: dict[str, str], *, read_bytes: int = 65536) -> WebhookAnswer:
    """POST to a webhook URL after the target checks, connected to the checked address; no redirects.

    Raises InvalidInput for a forbidden target, http.client.HTTPException/OSError/ValueError for
    network failures.
    """
    scheme, host, port = _target(url)
    address = webhook_address(url)
    parts = urlsplit(url)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection_class = _PinnedHTTPSConnection if scheme == "https" else _PinnedHTTPConnection
    connection = connection_class(host, port, address=address, timeout=WEBHOOK_TIMEOUT)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return WebhookAnswer(response.status, dict(response.getheaders()), response.read(read_bytes))
    finally:
        connection.close()


def webhook_send(alert: Alert, project: Project) -> None:
    """POST the signed alert; any answer but 2xx (redirects too), a timeout, a network error or a
    forbidden target is DeliveryFailed."""
    request = webhook_request(alert, project)
    headers = {name.title(): value for name, value in request.header_items()}  # as urllib sends them
    try:
        status = webhook_post(request.full_url, request.data, headers).status  # type: ignore[arg-type]
    except InvalidInput as exc:
        raise DeliveryFailed(f"webhook refused: {exc.message}") from None
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise DeliveryFailed(f"webhook failed: {getattr(exc, 'reason', exc)}") from None
    if not 200 <= status < 300:
        raise DeliveryFailed(f"webhook answered HTTP {status}")


# --- Slack -------------------------------------------------------------------------------------
# An incoming webhook (https://hooks.slack.com/services/...): the URL is the secret, so the console
# shows it masked and the audit log keeps only its mask. It goes through the same checks as the
# signed webhook (public address unless ALERT_WEBHOOK_ALLOW_PRIVATE, pinned, no redirects), and
# must be https when SLACK_WEBHOOK_HTTPS_ONLY (on in production).


def validate_slack_url(url: Any) -> str:
    """The saved-time check of a Slack incoming-webhook URL; "" clears it."""
    if url in (None, ""):
        return ""
    if not isinstance(url, str) or len(url) > 500:
        raise InvalidInput("the Slack webhook URL must be a string of at most 500 characters")
    try:
        scheme, _, _ = _target(url)
    except InvalidInput:
        raise InvalidInput("the Slack webhook URL must be an https:// URL with a host") from None
    if scheme != "https" and getattr(settings, "SLACK_WEBHOOK_HTTPS_ONLY", True):
        raise InvalidInput("the Slack webhook URL must be an https:// URL (Slack's incoming webhooks are)")
    try:
        webhook_address(url)
    except InvalidInput as exc:
        raise InvalidInput(exc.message.replace("the webhook URL", "the Slack webhook URL", 1)) from None
    except OSError:
        pass  # a name that does not resolve yet: send time checks it again
    return url


def console_link(alert: Alert) -> str | None:
    """The console page an alert is about (the user's page, else the project's), as an absolute URL;
    None without SITE_URL (a message without a button)."""
    if alert.limit_request_id is not None:
        return absolute_url(reverse("limit_requests", args=[alert.project_id]))
    if alert.scope == Alert.Scope.USER and alert.user_id:
        return absolute_url(reverse("user_detail", args=[alert.project_id, alert.user_id]))
    return absolute_url(reverse("project_overview", args=[alert.project_id]))


def absolute_url(path: str) -> str | None:
    """A console path under SITE_URL (where people reach the console); None when it is not set."""
    site = str(getattr(settings, "SITE_URL", "") or "").rstrip("/")
    return site + path if site else None


def slack_send(alert: Alert, project: Project) -> None:
    """POST the alert as a Block Kit message to the project's Slack webhook; DeliveryFailed unless 2xx."""
    body = dumps(slack_message(alert_payload(alert), link=console_link(alert))).encode()
    answer = slack_post(project.slack_webhook_url, body)
    if not 200 <= answer.status < 300:
        # Slack names the problem in the body (invalid_payload, no_service, channel_is_archived).
        said = answer.body[:200].decode("utf-8", "replace").strip()
        raise DeliveryFailed(f"Slack answered HTTP {answer.status}" + (f": {said}" if said else ""))


def slack_post(url: str, body: bytes) -> WebhookAnswer:
    """POST a JSON message to a Slack webhook URL (the checked, pinned, unredirected POST); DeliveryFailed
    for a refused target or a network failure, the answer otherwise."""
    headers = {"Content-Type": "application/json", "User-Agent": "budget-manager-alerts/1"}
    try:
        return webhook_post(url, body, headers, read_bytes=2048)
    except InvalidInput as exc:
        raise DeliveryFailed(f"Slack refused: {exc.message}") from None
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise DeliveryFailed(f"Slack failed: {getattr(exc, 'reason', exc)}") from None


def _about(alert: Alert) -> str:
    """Whose alert it is, in words."""
    if alert.kind == Alert.Kind.ANOMALY:
        return f"team {alert.subject!r}" if alert.scope == Alert.Scope.TEAM else f"user {alert.user_id!r}"
    if alert.scope == Alert.Scope.LIMIT and alert.source_limit is not None:
        return f"the limit {alert.source_limit}"
    return f"user {alert.user_id!r}" if alert.scope == Alert.Scope.USER else "the project"


def email_text(alert: Alert, project: Project) -> tuple[str, str]:
    """An alert's email: its subject and body, in the words of its kind."""
    who, figures = _about(alert), alert_payload(alert)
    sign = "$" if figures.get("unit") in (None, "usd") else ""
    headlines: dict[str, str] = {
        Alert.Kind.THRESHOLD: f"{who} reached {alert.threshold}% of the budget",
        Alert.Kind.RESOLVED: f"{who} is back under {alert.threshold}% of the budget",
        Alert.Kind.FORECAST: f"{who} is forecast to reach {figures.get('forecast')} by the end of its window",
        Alert.Kind.ANOMALY: f"{who} spent {alert.spend} today, over {figures.get('multiple')}x its daily average",
    }
    headline = headlines.get(alert.kind, f"{who}: {alert.kind}")
    lines = [f"Project: {project.name}", f"About: {who}", f"Event: {alert.get_kind_display()}",
             f"Spend this period: {sign}{alert.spend} of {sign}{alert.limit} ({alert.threshold}% threshold)",
             f"Since: {alert.period_start.isoformat()}"]
    lines += [f"{name.replace('_', ' ').capitalize()}: {figures[name]}" for name in _DETAIL_FIELDS if name in figures]
    return f"[Budget Manager] {project.name}: {headline}", "\n".join(lines) + "\n"


def email_send(alert: Alert, project: Project) -> None:
    if alert.kind in REQUEST_KINDS:
        payload = alert_payload(alert)
        status = "new" if alert.kind == Alert.Kind.LIMIT_REQUEST else payload["request"]["status"]
        subject = f"[Budget Manager] {project.name}: limit request {alert.limit_request_id} {status}"
        link = absolute_url(reverse("limit_requests", args=[project.pk]))
        body = f"Project: {project.name}\n{payload['message']}\n" + (f"\nRequests: {link}\n" if link else "")
        _mail(subject, body, project)
        return
    subject, body = email_text(alert, project)
    _mail(subject, body, project)


def _mail(subject: str, body: str, project: Project) -> None:
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [project.alert_email])
    except (OSError, ValueError) as exc:  # smtplib's errors are OSErrors; bad headers are ValueErrors
        raise DeliveryFailed(f"email failed: {exc}") from None
