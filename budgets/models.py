"""The budget domain: projects, user budgets, the cost ledger, periods, prices, keys, audit."""

from __future__ import annotations

import secrets
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.urls import reverse
from django.utils.timezone import now

from .base.fields import MoneyField
from .base.money import format_dollars

# Prices per token are tiny (1.5e-7 and below): more places.
PRICE: dict[str, Any] = {"max_digits": 24, "decimal_places": 18}
ZERO = Decimal(0)


class Duration(models.TextChoices):
    NONE = "none", "No reset"
    DAILY = "daily", "Daily"
    WEEKLY = "weekly", "Weekly"
    MONTHLY = "monthly", "Monthly"
    YEARLY = "yearly", "Yearly"
    DAYS = "days", "Every N days"


def default_alert_thresholds() -> list[int]:
    return [80, 100]


def new_webhook_secret() -> str:
    return secrets.token_urlsafe(32)


class Period(models.Model):
    """Fields shared by anything that has a spend that resets with a period."""

    duration = models.CharField(max_length=8, choices=Duration.choices, default=Duration.NONE)
    duration_days = models.PositiveIntegerField(
        null=True, blank=True, help_text="Only for 'every N days' (LiteLLM hosted durations such as 30)."
    )
    current_spend = MoneyField(default=ZERO)
    # Open reservations' holds (reserve adds, settle/release/expire subtract): remaining is one row read.
    held = MoneyField(default=ZERO)
    period_start = models.DateTimeField(default=now)
    next_reset_at = models.DateTimeField(null=True, blank=True, db_index=True)

    class Meta:
        abstract = True

    def is_due(self, at: datetime | None = None) -> bool:
        return self.next_reset_at is not None and self.next_reset_at <= (at or now())


class Project(Period):
    """The unit of isolation; `name` is LiteLLM's project_name.

    Its own period fields track project-wide spend against `max_budget`
    (duration none = a lifetime cap, like the seed's litellm.max_budget).
    """

    name = models.CharField(max_length=200, unique=True)
    max_budget = MoneyField(null=True, blank=True)
    timezone = models.CharField(max_length=64, default="UTC")
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="budget_projects", through="Membership"
    )
    alert_thresholds = models.JSONField(
        default=default_alert_thresholds, blank=True, help_text="Percentages of a budget, e.g. [80, 100]."
    )
    alert_webhook_url = models.URLField(blank=True, max_length=500)
    alert_email = models.EmailField(blank=True)
    slack_webhook_url = models.URLField(blank=True, max_length=500, help_text="A Slack incoming webhook for alerts.")
    # Per model, the models to suggest (in order) when a call of it is refused: {"gpt-4o": ["gpt-4o-mini"]}.
    # Checked by budgets.base.validation.validate_fallbacks; advice only (services.fallbacks).
    fallbacks = models.JSONField(default=dict, blank=True,
                                 help_text='Fallback models per model, e.g. {"gpt-4o": ["gpt-4o-mini"]}.')
    # Every threshold some limit of the project has as its own list (services.limits keeps it): a
    # record checks these with the project's list before it reads a limit's own list, so the common
    # case (nothing crossed) costs no query (services.alerts.limits_counted).
    limit_thresholds = models.JSONField(default=list, blank=True, editable=False)
    # Spend anomalies (services.anomalies): today's spend of a user or team over `anomaly_multiple`
    # times its trailing daily average, and at least `anomaly_floor` dollars.
    anomaly_alerts = models.BooleanField(default=True, help_text="Alert when a user's or team's daily spend jumps.")
    anomaly_multiple = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal(3),
                                           help_text="Times the trailing 14-day daily average.")
    anomaly_floor = MoneyField(default=Decimal(1), help_text="Dollars a day below which spend is never an anomaly.")
    webhook_secret = models.CharField(max_length=64, default=new_webhook_secret)
    created_at = models.DateTimeField(default=now)
    # Set when the project is deleted (its keys revoked in the same transaction): it is gone from
    # the console at once, and its rows are removed in short batches, the row itself last.
    deleting_since = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("project_overview", args=[self.pk])

    @property
    def is_over_budget(self) -> bool:
        return self.max_budget is not None and self.current_spend >= self.max_budget


class Role(models.TextChoices):
    """A member's role in a project; each includes what the ones after it may do."""

    OWNER = "owner", "Owner"
    MANAGER = "manager", "Manager"
    VIEWER = "viewer", "Viewer"


class Action(models.TextChoices):
    """What a console page or action needs: reading, changing budgets/keys/settings, members, deletion."""

    VIEW = "view", "see every page and export CSV"
    CHANGE = "change", "change budgets, resets, keys, alert and project settings"
    MANAGE_MEMBERS = "manage_members", "add, change and remove members"
    DELETE = "delete", "delete the project"


ROLE_ACTIONS: dict[str, frozenset[str]] = {
    Role.OWNER: frozenset(Action.values),
    Role.MANAGER: frozenset({Action.VIEW, Action.CHANGE}),
    Role.VIEWER: frozenset({Action.VIEW}),
}


def role_allows(role: str | None, action: str) -> bool:
    return role is not None and action in ROLE_ACTIONS.get(role, frozenset())


class Membership(models.Model):
    """A person's role in a project (staff need none: they see and do everything)."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="budget_memberships")
    # `project.members.add(user)` (admin before roles, seed_demo) always meant full rights: it still does.
    # The console's members page always names the role.
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.OWNER)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["project", "user__username"]
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="one_membership_per_user")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project}: {self.role}"

    def allows(self, action: str) -> bool:
        return role_allows(self.role, action)


class Invitation(models.Model):
    """An invitation to join a project with a role; the membership starts only when it is accepted.

    `invitee` is what the owner typed: an email address (stored lower-case; accepted by an account
    with that address, or by a new account created on acceptance) or a username (accepted by that
    account only). The link carries the row's id signed with SECRET_KEY (services/members.py);
    a link works until `expires_at`, once, and not after it is revoked.
    """

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="invitations")
    invitee = models.CharField(max_length=254)
    is_email = models.BooleanField()
    role = models.CharField(max_length=10, choices=Role.choices)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
    created_at = models.DateTimeField(default=now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["project", "accepted_at", "revoked_at"], name="invitation_pending")]

    def __str__(self) -> str:
        return f"{self.invitee} to {self.project} as {self.role}"

    def is_for(self, user: Any) -> bool:
        """Whether this account may accept: the invited username's account, or an account with the invited email."""
        if self.is_email:
            return bool(user.email) and user.email.lower() == self.invitee
        return bool(user.get_username().lower() == self.invitee.lower())


class UserBudget(Period):
    """One end user's budget inside a project, with the spend of its current period."""

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="budgets",
        db_index=False,  # the indexes and constraints below lead with it
    )
    user_id = models.CharField(max_length=255)
    total_budget = MoneyField()
    # What LiteLLM's hosted client last reported per model; set_budget records growth past it.
    hosted_model_cost = models.JSONField(default=dict, blank=True)
    # The server period that baseline belongs to: a sweep since then already did the client's reset.
    hosted_period_start = models.DateTimeField(null=True, blank=True)
    # The part of this period's spend that the user's grants paid (services.grants): the periodic budget
    # paid current_spend - granted; zero again at each reset.
    granted = MoneyField(default=ZERO)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)
    # Indexed with the id below: the sweep takes due budgets in (next_reset_at, id) order.
    next_reset_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "user_id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "user_id"], name="unique_user_per_project"),
            models.CheckConstraint(condition=Q(total_budget__gte=0), name="budget_non_negative"),
        ]
        indexes = [
            models.Index(fields=["project", "current_spend"], name="budget_project_spend"),
            models.Index(fields=["project", "updated_at"], name="budget_project_updated"),
            # A project's daily budgets all end at the same instant: ordered by the time alone, each
            # batch of the sweep sorted every budget still due by id (quadratic at 1M budgets).
            models.Index(fields=["next_reset_at", "id"], name="budget_due"),
        ]

    def __str__(self) -> str:
        return f"{self.project.name}/{self.user_id}"

    def get_absolute_url(self) -> str:
        return reverse("user_detail", args=[self.project_id, self.user_id])

    @property
    def remaining(self) -> Decimal:
        """Budget left for new calls: budget − (spend − what grants paid) − open holds, plus what the user's
        grants have left where the reader read it (`grant_room`); may be negative."""
        return (self.total_budget + self.granted + getattr(self, "grant_room", ZERO) - self.current_spend
                - self.held)

    @property
    def utilisation(self) -> Decimal | None:
        """Spend as a percentage of the budget (None for a zero budget)."""
        if self.total_budget <= 0:
            return None
        return self.current_spend * 100 / self.total_budget

    @property
    def is_over_budget(self) -> bool:
        return self.current_spend >= self.total_budget


class ModelSpend(models.Model):
    """A user's spend on one model in the current period."""

    budget = models.ForeignKey(
        UserBudget, on_delete=models.CASCADE, related_name="model_spends",
        db_index=False,  # the indexes and constraints below lead with it
    )
    model = models.CharField(max_length=255)
    spend = MoneyField(default=ZERO)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["model"]
        constraints = [models.UniqueConstraint(fields=["budget", "model"], name="unique_model_per_budget")]

    def __str__(self) -> str:
        return f"{self.budget_id}:{self.model}={format_dollars(self.spend)}"


class CostEvent(models.Model):
    """The append-only ledger: one row per recorded call."""

    class Source(models.TextChoices):
        API = "api", "JSON API"
        HOSTED = "hosted", "LiteLLM hosted"
        MANAGER = "manager", "BudgetManager (Python)"
        DEMO = "demo", "Demo data"

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="cost_events",
        db_index=False,  # the indexes and constraints below lead with it
    )
    budget = models.ForeignKey(
        UserBudget, on_delete=models.SET_NULL, null=True, blank=True, related_name="cost_events"
    )
    user_id = models.CharField(max_length=255)
    model = models.CharField(max_length=255)
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    cache_creation_tokens = models.BigIntegerField(default=0)
    cost = MoneyField()
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.API)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    response = models.JSONField(null=True, blank=True, help_text="The first answer, replayed on a retry.")
    # The call's tags as ",a,b," (filter with tags__contains=",a,"): portable, no join on the hot path.
    # db_default too: the PostgreSQL fast paths insert ledger rows with SQL of their own.
    tags = models.CharField(max_length=400, blank=True, default="", db_default="")
    api_key = models.ForeignKey("ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="unique_idempotency_key_per_project",
            ),
            models.CheckConstraint(condition=Q(cost__gte=0), name="cost_non_negative"),
        ]
        indexes = [
            models.Index(fields=["project", "created_at"], name="ledger_project_time"),
            models.Index(fields=["project", "user_id", "created_at"], name="ledger_user_time"),
            models.Index(fields=["project", "model", "created_at"], name="ledger_model_time"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.model} {format_dollars(self.cost)}"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Reservation(models.Model):
    """A hold of a call's worst-case cost against a user's and the project's remaining budget."""

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        SETTLED = "settled", "Settled"
        RELEASED = "released", "Released"
        EXPIRED = "expired", "Expired"

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="reservations",
        db_index=False,  # the indexes and constraints below lead with it
    )
    # Kept when the budget is deleted: the project's hold is still released by id or by expiry.
    budget = models.ForeignKey(
        UserBudget, on_delete=models.SET_NULL, null=True, blank=True, related_name="reservations"
    )
    user_id = models.CharField(max_length=255)
    model = models.CharField(max_length=255, null=True, blank=True)
    amount = MoneyField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    expires_at = models.DateTimeField()
    created_at = models.DateTimeField(default=now)
    settled_at = models.DateTimeField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True)
    response = models.JSONField(null=True, blank=True, help_text="The first answer, replayed on a retry.")
    settle_response = models.JSONField(null=True, blank=True, help_text="The settle answer, replayed on a retry.")
    event = models.ForeignKey(
        CostEvent, on_delete=models.SET_NULL, null=True, blank=True, related_name="reservations"
    )
    settled_cost = MoneyField(null=True, blank=True)
    tags = models.CharField(max_length=400, blank=True, default="", db_default="")
    api_key = models.ForeignKey("ApiKey", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    # The worst case held in the other units, and the limits it is held on (ids): settle,
    # release and expiry give back exactly these holds, whatever changed in between.
    tokens = models.BigIntegerField(default=0)
    limit_ids = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="unique_reservation_key_per_project",
            ),
            models.CheckConstraint(condition=Q(amount__gte=0), name="reservation_amount_non_negative"),
        ]
        indexes = [
            models.Index(fields=["status", "expires_at"], name="reservation_open_expiry"),
            models.Index(fields=["project", "user_id", "status"], name="reservation_user_status"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {format_dollars(self.amount)} {self.status}"

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.OPEN


class Sums(models.Model):
    """What a rollup row adds up of its ledger rows (services.rollups keeps them equal to the ledger)."""

    spend = MoneyField(default=ZERO)
    events = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class TokenSums(Sums):
    prompt_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)

    class Meta:
        abstract = True


class SpendDay(TokenSums):
    """Spend per user, model and local day (the project's time zone): what the console's charts read.

    Every ledger insert adds to its row in the same transaction (services.rollups), so these
    sums equal the ledger's; at millions of events the charts read thousands of rows, not millions.
    """

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="spend_days",
        db_index=False,  # the indexes and constraints below lead with it
    )
    day = models.DateField()
    user_id = models.CharField(max_length=255)
    model = models.CharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "day", "user_id", "model"], name="unique_spend_day"),
        ]
        indexes = [models.Index(fields=["project", "user_id", "day"], name="spend_day_user")]

    def __str__(self) -> str:
        return f"{self.day} {self.user_id} {self.model} {format_dollars(self.spend)}"


class ModelDay(TokenSums):
    """Spend per model and local day, all users together: the project-wide charts and model tables.

    A few rows a day whatever the number of users or calls; kept with SpendDay (services.rollups).
    """

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="model_days",
        db_index=False,  # the indexes and constraints below lead with it
    )
    day = models.DateField()
    model = models.CharField(max_length=255)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "day", "model"], name="unique_model_day")]

    def __str__(self) -> str:
        return f"{self.day} {self.model} {format_dollars(self.spend)}"


class UserDay(Sums):
    """Spend per user and local day, all models together: a user's exact spend over a range.

    One row per active user a day (not per call, not per model); kept with SpendDay (services.rollups).
    """

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="user_days",
        db_index=False,  # the indexes and constraints below lead with it
    )
    day = models.DateField()
    user_id = models.CharField(max_length=255)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "day", "user_id"], name="unique_user_day")]
        indexes = [models.Index(fields=["project", "user_id", "day"], name="user_day_user")]

    def __str__(self) -> str:
        return f"{self.day} {self.user_id} {format_dollars(self.spend)}"


class UserMonth(Sums):
    """Spend per user and local calendar month (`month` is its first day): each month's biggest
    spenders, read from an index, rank users over any range (selectors.console.ranked_users)."""

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="user_months",
        db_index=False,  # the indexes and constraints below lead with it
    )
    month = models.DateField()
    user_id = models.CharField(max_length=255)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "month", "user_id"], name="unique_user_month")]
        # Each month's biggest spenders first, read from the index alone (selectors.console.ranked_users).
        indexes = [models.Index(fields=["project", "month", "-spend", "user_id"], name="user_month_rank")]

    def __str__(self) -> str:
        return f"{self.month:%Y-%m} {self.user_id} {format_dollars(self.spend)}"


class BudgetPeriod(models.Model):
    """A finished period of a user's budget: what was spent in it."""

    budget = models.ForeignKey(UserBudget, on_delete=models.CASCADE, related_name="periods")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="budget_periods")
    user_id = models.CharField(max_length=255)
    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    spend = MoneyField()
    total_budget = MoneyField()
    model_spend = models.JSONField(default=dict, blank=True, help_text="Model → spend (decimal strings).")
    reason = models.CharField(max_length=20, default="period_end")
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-period_start"]
        constraints = [
            # A period is closed once: duplicate or concurrent sweeps cannot write it twice. The end
            # is part of it: after a duration change a new period may start where an old one did.
            models.UniqueConstraint(fields=["budget", "period_start", "period_end"], name="unique_period_per_budget"),
        ]
        indexes = [models.Index(fields=["project", "period_end"], name="period_project_end")]

    def __str__(self) -> str:
        return f"{self.user_id} {self.period_start:%Y-%m-%d}–{self.period_end:%Y-%m-%d} {format_dollars(self.spend)}"


class ModelPrice(models.Model):
    """A model's prices, in LiteLLM's model price map format (dollars per token)."""

    model = models.CharField(max_length=255, unique=True)
    provider = models.CharField(max_length=100, blank=True, db_index=True)
    mode = models.CharField(max_length=50, blank=True)
    input_cost_per_token = models.DecimalField(**PRICE, default=ZERO)
    output_cost_per_token = models.DecimalField(**PRICE, default=ZERO)
    cache_read_input_token_cost = models.DecimalField(**PRICE, null=True, blank=True)
    cache_creation_input_token_cost = models.DecimalField(**PRICE, null=True, blank=True)
    max_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_input_tokens = models.PositiveIntegerField(null=True, blank=True)
    max_output_tokens = models.PositiveIntegerField(null=True, blank=True)
    source = models.CharField(max_length=20, default="snapshot")
    updated_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["model"]

    def __str__(self) -> str:
        return self.model


class ApiKey(models.Model):
    """A project's API key; only its SHA-256 is stored, the secret is shown once."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=now)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        # A key limit names its key: the name is unique in its project (revoked keys keep theirs).
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="unique_key_name_per_project")]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class AuditLog(models.Model):
    """Who changed which budget, and from what to what."""

    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="audit_entries",
        db_index=False,  # the indexes and constraints below lead with it
    )
    budget = models.ForeignKey(UserBudget, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    user_id = models.CharField(max_length=255, blank=True)
    action = models.CharField(max_length=40)
    actor = models.CharField(max_length=200, help_text="user:<name>, key:<prefix>, system:<job>")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["project", "created_at"], name="audit_project_time"),
            models.Index(fields=["project", "user_id", "created_at"], name="audit_user_time"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.user_id} by {self.actor}"


class Alert(models.Model):
    """A budget event (a crossed threshold, its resolution, a forecast over a limit, a spend anomaly):
    a row first (the outbox), delivered by a task second."""

    class Scope(models.TextChoices):
        USER = "user", "User budget"
        PROJECT = "project", "Project budget"
        LIMIT = "limit", "Limit"
        TEAM = "team", "Team"

    class Kind(models.TextChoices):
        THRESHOLD = "threshold", "Threshold crossed"
        RESOLVED = "resolved", "Back under a threshold"
        FORECAST = "forecast", "Forecast over the limit"
        ANOMALY = "anomaly", "Spend anomaly"
        LIMIT_REQUEST = "limit_request", "Limit request"
        LIMIT_REQUEST_DECIDED = "limit_request_decided", "Limit request decided"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="alerts")
    budget = models.ForeignKey(UserBudget, on_delete=models.SET_NULL, null=True, blank=True, related_name="alerts")
    # Scope "limit": the Limit row whose used crossed the threshold (its window is `period_start`).
    source_limit = models.ForeignKey("Limit", on_delete=models.CASCADE, null=True, blank=True,
                                     related_name="alerts")
    # Kinds limit_request*: the request; what it was when the event happened is in `details` (the
    # webhook's `request`).
    limit_request = models.ForeignKey("LimitRequest", on_delete=models.CASCADE, null=True, blank=True,
                                      related_name="alerts")
    scope = models.CharField(max_length=10, choices=Scope.choices)
    kind = models.CharField(max_length=30, choices=Kind.choices, default=Kind.THRESHOLD)
    user_id = models.CharField(max_length=255, blank=True)
    # An anomaly's subject: the user id or the team's name (once per subject per local day).
    subject = models.CharField(max_length=255, blank=True, default="")
    threshold = models.PositiveIntegerField(help_text="Percent of the budget (an anomaly: the multiple, in percent).")
    # A limit's threshold may fire again in a window after it resolved: the nth firing is cycle n
    # (its `resolved` event has the same cycle), so each is once under concurrency too.
    cycle = models.PositiveIntegerField(default=0)
    # Figures of a forecast or an anomaly (decimal strings): forecast, baseline, top_model, ...
    details = models.JSONField(default=dict, blank=True)
    period_start = models.DateTimeField()
    spend = MoneyField()
    limit = MoneyField()
    created_at = models.DateTimeField(default=now)
    delivered_at = models.DateTimeField(null=True, blank=True)
    # Each target that took the alert, so that a retry sends only to the ones that did not: a Slack
    # channel that answers 500 never makes the signed webhook go out twice, nor the other way round.
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    slack_sent_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    # Not before: a claimed delivery's lease, then a failed one's backoff (two workers never send twice).
    next_attempt_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["project", "scope", "user_id", "threshold", "period_start"],
                condition=Q(source_limit__isnull=True, kind="threshold"),
                name="one_alert_per_threshold_per_period",
            ),
            models.UniqueConstraint(
                fields=["source_limit", "kind", "threshold", "period_start", "cycle"],
                condition=Q(source_limit__isnull=False, limit_request__isnull=True),
                name="one_alert_per_limit_event_per_window",
            ),
            models.UniqueConstraint(
                fields=["project", "scope", "subject", "period_start"],
                condition=Q(kind="anomaly"),
                name="one_anomaly_per_subject_per_day",
            ),
            models.UniqueConstraint(
                fields=["limit_request", "kind"], condition=Q(limit_request__isnull=False),
                name="one_alert_per_limit_request_event",
            ),
        ]
        indexes = [
            models.Index(fields=["project", "created_at"], name="alert_project_time"),
            models.Index(fields=["delivered_at"], name="alert_undelivered"),
        ]

    def __str__(self) -> str:
        who = self.user_id or "project"
        return f"{self.project.name}/{who} crossed {self.threshold}%"


class Team(models.Model):
    """A group of a project's users that may share limits; a user is in at most one team of a project."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="teams")
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["project", "name"], name="unique_team_per_project")]

    def __str__(self) -> str:
        return self.name


class TeamMember(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="members")
    # The project again, so that "one team per user in a project" is a constraint, not a rule to remember.
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    user_id = models.CharField(max_length=255)

    class Meta:
        ordering = ["user_id"]
        constraints = [models.UniqueConstraint(fields=["project", "user_id"], name="one_team_per_user")]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.team_id}"


class Limit(models.Model):
    """A cap on what a scope's calls may use in a window: dollars, tokens or requests.

    The user budget (UserBudget) and the project cap (Project.max_budget) are limits of this
    model too (scope user/project, unit usd), kept in their own rows; these rows are the rest.
    """

    class Scope(models.TextChoices):
        PROJECT = "project", "Project"
        TEAM = "team", "Team"
        USER = "user", "User"
        KEY = "key", "API key"
        TAG = "tag", "Tag"

    class Unit(models.TextChoices):
        USD = "usd", "Dollars"
        TOKENS = "tokens", "Tokens"
        REQUESTS = "requests", "Requests"

    class Window(models.TextChoices):
        HOUR = "hour", "Hour"
        DAY = "day", "Day"
        WEEK = "week", "Week"
        MONTH = "month", "Month"
        YEAR = "year", "Year"
        LIFETIME = "lifetime", "Lifetime"

    class Mode(models.TextChoices):
        HARD = "hard", "Hard (refuses)"
        SOFT = "soft", "Soft (alerts only)"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="limits")
    scope = models.CharField(max_length=10, choices=Scope.choices)
    subject = models.CharField(max_length=255, blank=True, help_text="Team name, user id, key name or tag.")
    model = models.CharField(max_length=255, blank=True, help_text="Only this model's calls; blank: every model.")
    unit = models.CharField(max_length=10, choices=Unit.choices, default=Unit.USD)
    window = models.CharField(max_length=10, choices=Window.choices, default=Window.MONTH)
    # Dollars, or a whole number of tokens or requests (one column: the unit says which).
    amount = MoneyField()
    mode = models.CharField(max_length=4, choices=Mode.choices, default=Mode.HARD)
    # The limit's own alert thresholds (whole percentages, sorted); null: the project's list.
    thresholds = models.JSONField(null=True, blank=True)
    used = MoneyField(default=ZERO)
    held = MoneyField(default=ZERO)
    # The sum of the active temporary raises (LimitIncrease) and the earliest end among them (null:
    # none): the effective limit is amount + raised; a limit whose raises_end_at has passed has its
    # ended raises taken off before it is used (services.limit_windows), as a window that ended.
    raised = MoneyField(default=ZERO)
    raises_end_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # The part of this window's `used` that the subject's grants paid (services.grants; dollar limits of a
    # user or a team on every model only), zero again at each reset.
    granted = MoneyField(default=ZERO)
    # A hard limit refuses only past amount × (1 + grace_percent / 100); alerts still fire at 100 %.
    grace_percent = models.PositiveSmallIntegerField(null=True, blank=True)
    # At each reset the unused part, up to this, becomes a grant until the next window's end (null: none).
    rollover_max = MoneyField(null=True, blank=True)
    window_start = models.DateTimeField(default=now)
    resets_at = models.DateTimeField(null=True, blank=True, db_index=True)
    created_at = models.DateTimeField(default=now)
    updated_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["scope", "subject", "model", "unit", "window"]
        constraints = [
            models.UniqueConstraint(fields=["project", "scope", "subject", "model", "unit", "window"],
                                    name="unique_limit"),
            models.CheckConstraint(condition=Q(amount__gte=0), name="limit_amount_non_negative"),
            models.CheckConstraint(condition=Q(raised__gte=0), name="limit_raised_non_negative"),
        ]
        indexes = [models.Index(fields=["project", "scope", "subject"], name="limit_subject")]

    @property
    def effective(self) -> Decimal:
        """The limit as admission applies it: the amount plus the active raises."""
        return self.amount + self.raised

    def __str__(self) -> str:
        subject = f" {self.subject!r}" if self.subject else ""
        model = f" on {self.model}" if self.model else ""
        return f"{self.scope}{subject}{model}: {self.amount} {self.unit} per {self.window}"


class LimitRequest(models.Model):
    """An application's (or a person's) request, on a user's behalf, for more room under a limit;
    an owner or a manager approves it in the console (a raise or a new amount) or denies it."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        DENIED = "denied", "Denied"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="limit_requests")
    user_id = models.CharField(max_length=255)
    limit = models.ForeignKey(Limit, on_delete=models.CASCADE, related_name="requests")
    amount = MoneyField()
    reason = models.TextField(blank=True)
    until = models.DateTimeField(null=True, blank=True, help_text="Asked end of the raise; null: none asked.")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    requested_by = models.CharField(max_length=255, help_text="Who asked, as the audit log names actors.")
    decided_by = models.CharField(max_length=255, blank=True)
    decision = models.CharField(max_length=10, blank=True, help_text="raise or permanent, for an approval.")
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(default=now)
    decided_at = models.DateTimeField(null=True, blank=True)
    increase = models.OneToOneField("LimitIncrease", on_delete=models.SET_NULL, null=True, blank=True,
                                    related_name="+")

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="limit_request_amount_positive")]
        indexes = [models.Index(fields=["project", "status", "created_at"], name="limit_request_status")]

    def __str__(self) -> str:
        return f"request {self.pk} for {self.user_id} on limit {self.limit_id}: {self.amount} ({self.status})"


class Grant(models.Model):
    """Prepaid dollars (a credit) for a user or a team, used after the periodic limits are: the ledger
    records which grant paid each part of a call (GrantUse). Used by priority (lower first), then the
    earliest expiry; an expired grant's rest is void."""

    class Scope(models.TextChoices):
        USER = "user", "User"
        TEAM = "team", "Team"

    class Source(models.TextChoices):
        MANUAL = "manual", "Granted"
        ROLLOVER = "rollover", "Rollover"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="grants")
    scope = models.CharField(max_length=4, choices=Scope.choices)
    subject = models.CharField(max_length=255, help_text="The user's id or the team's name.")
    amount = MoneyField()
    used = MoneyField(default=ZERO)
    priority = models.PositiveIntegerField(default=1, help_text="Lower is used first.")
    expires_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=2000, blank=True)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.MANUAL)
    # A rollover's limit and the window it rolled over from: one grant per window.
    limit = models.ForeignKey(Limit, on_delete=models.SET_NULL, null=True, blank=True, related_name="rollovers")
    window_start = models.DateTimeField(null=True, blank=True)
    voided = MoneyField(null=True, blank=True, help_text="The rest made void at expiry (or when revoked).")
    voided_at = models.DateTimeField(null=True, blank=True)
    actor = models.CharField(max_length=255)
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["priority", "expires_at", "id"]
        constraints = [
            models.CheckConstraint(condition=Q(amount__gt=0), name="grant_amount_positive"),
            models.CheckConstraint(condition=Q(used__gte=0) & Q(used__lte=F("amount")), name="grant_used_within"),
            models.UniqueConstraint(fields=["limit", "window_start"], condition=Q(source="rollover"),
                                    name="one_rollover_per_window"),
        ]
        indexes = [models.Index(fields=["project", "scope", "subject"], name="grant_subject")]

    @property
    def remaining(self) -> Decimal:
        return ZERO if self.voided_at is not None else self.amount - self.used

    def active_at(self, at: datetime) -> bool:
        return self.voided_at is None and (self.expires_at is None or at < self.expires_at)

    def status_at(self, at: datetime) -> str:
        """active; used (nothing left); expired (its rest void from its expiry on); void (revoked)."""
        if self.voided_at is not None and not (self.expires_at and self.voided_at >= self.expires_at):
            return "void"
        if self.expires_at is not None and self.expires_at <= at:
            return "expired"
        return "used" if self.used >= self.amount else "active"

    def __str__(self) -> str:
        return f"${self.amount} for {self.scope} {self.subject!r}"


class GrantUse(models.Model):
    """What one grant paid of one ledger row."""

    event = models.ForeignKey("CostEvent", on_delete=models.CASCADE, related_name="grant_uses")
    grant = models.ForeignKey(Grant, on_delete=models.CASCADE, related_name="uses")
    amount = MoneyField()

    class Meta:
        ordering = ["event", "grant"]
        constraints = [models.UniqueConstraint(fields=["event", "grant"], name="one_use_per_grant_and_event")]


class LimitIncrease(models.Model):
    """A temporary raise of a limit by `amount`, from starts_at until ends_at (or ended_at, ended early)."""

    limit = models.ForeignKey(Limit, on_delete=models.CASCADE, related_name="increases")
    amount = MoneyField()
    starts_at = models.DateTimeField(default=now)
    ends_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True, help_text="Ended early (DELETE); null otherwise.")
    actor = models.CharField(max_length=255, help_text="Who raised it, as the audit log names actors.")
    request = models.ForeignKey(LimitRequest, on_delete=models.SET_NULL, null=True, blank=True,
                                related_name="increases")
    created_at = models.DateTimeField(default=now)

    class Meta:
        ordering = ["ends_at", "id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="limit_increase_amount_positive")]
        indexes = [models.Index(fields=["limit", "ends_at"], name="limit_increase_end")]

    def active_at(self, at: datetime) -> bool:
        return self.ended_at is None and self.starts_at <= at < self.ends_at

    def __str__(self) -> str:
        return f"+{self.amount} on limit {self.limit_id} until {self.ends_at.isoformat()}"
