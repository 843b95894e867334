"""Django admin for support staff: find a budget, correct it, reset it, read the ledger and audit log.

Changes to budgets go through budgets.services, so the admin writes the audit log
like every other entry point.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any, ClassVar

from django import forms
from django.contrib import admin, messages
from django.db import models
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import NoReverseMatch, reverse
from django.utils.html import format_html

from .base.fields import MoneyField
from .base.money import format_dollars
from .models import (
    Alert,
    ApiKey,
    AuditLog,
    BudgetPeriod,
    CostEvent,
    Limit,
    LimitIncrease,
    LimitRequest,
    Membership,
    ModelPrice,
    ModelSpend,
    Project,
    Reservation,
    Team,
    TeamMember,
    UserBudget,
)
from .selectors.console import project_contents
from .services.alerts import alert_retry
from .services.audit import actor_for_user
from .services.keys import api_key_revoke
from .services.prices import price_save_edited
from .services.projects import project_create, project_delete, project_update
from .services.user_budgets import budget_delete, budget_reset, budget_set


def actor_for(request: HttpRequest) -> str:
    return actor_for_user(request.user, via="admin")


class MoneyInput(forms.TextInput):
    """An amount to edit, exact but without the 12 stored places: 10, not 10.000000000000."""

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, str):
            try:
                value = Decimal(value)
            except InvalidOperation:
                return value  # what was typed, shown back with its error
        if isinstance(value, Decimal) and value.is_finite():
            return format(value.normalize(), "f") if value else "0"
        return super().format_value(value)


@cache
def _money_column(model: type[models.Model], name: str) -> Callable[[Any], str]:
    label = getattr(model._meta.get_field(name), "verbose_name", name)

    @admin.display(description=label, ordering=name)
    def show(obj: Any) -> str:
        return format_dollars(getattr(obj, name))

    show.__name__ = name  # the column's CSS class, as for the field itself
    return show


def _with_money(model: type[models.Model], names: Sequence[Any]) -> list[Any]:
    """Money fields (MoneyField) replaced by columns in the console's one money format."""
    money = {f.name for f in model._meta.concrete_fields if isinstance(f, MoneyField)}
    return [_money_column(model, n) if isinstance(n, str) and n in money else n for n in names]


class MoneyDisplay:
    """Money shown as the console shows it ($1,234.56, $0.0142), in lists and read-only fields.

    Django admin formats a DecimalField with all its decimal places (1.000000000000); inputs
    keep the exact amount, without the trailing zeros. The stubs allow only names in these
    lists, where Django also takes callables (the formatted columns).
    """

    model: type[models.Model]
    formfield_overrides: ClassVar[Mapping[type[models.Field[Any, Any]], Mapping[str, Any]]] = {
        MoneyField: {"widget": MoneyInput}}

    def get_list_display(self, request: HttpRequest) -> list[Any]:
        return _with_money(self.model, super().get_list_display(request))  # type: ignore[misc]

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        return _with_money(self.model, super().get_readonly_fields(request, obj))  # type: ignore[misc]

    def get_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        # On a page the person may not change, every field is read-only.
        readonly = set(super().get_readonly_fields(request, obj))  # type: ignore[misc]
        if obj is not None and not self.has_change_permission(request, obj):  # type: ignore[attr-defined]
            readonly |= {f.name for f in self.model._meta.concrete_fields}
        fields = super().get_fields(request, obj)  # type: ignore[misc]
        return [_with_money(self.model, [n])[0] if n in readonly else n for n in fields]


class MoneyAdmin(MoneyDisplay, admin.ModelAdmin):
    pass


class ReadOnlyAdmin(MoneyAdmin):
    """Facts (ledger, periods, audit) are read, never edited."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    """Members are shown here and changed on the console's Members page (through the audited services)."""

    model = Membership
    fields = ("user", "role", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "Members (change them on the console's Members page)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Project)
class ProjectAdmin(MoneyAdmin):
    list_display = ("name", "current_spend", "held", "max_budget", "duration", "timezone", "next_reset_at",
                    "created_at")
    search_fields = ("name",)
    list_filter = ("duration", "timezone")
    inlines = [MembershipInline]
    readonly_fields = ("current_spend", "held", "period_start", "next_reset_at", "created_at")
    # Secrets: the Slack URL is set (and shown masked) on the console's settings page; the anomaly
    # settings are set there too (validated by services.projects).
    exclude = ("webhook_secret", "slack_webhook_url", "anomaly_alerts", "anomaly_multiple", "anomaly_floor")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Project]:
        return super().get_queryset(request).filter(deleting_since__isnull=True)  # their rows go in batches

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest,
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        # Not Django's collector: it would load every ledger row, and refuse because facts are read-only here.
        projects = list(objs)
        counts: dict[str, int] = {"projects": len(projects)}
        for project in projects:
            for what, number in project_contents(project).items():
                counts[what.replace("_", " ")] = counts.get(what.replace("_", " "), 0) + number
        return [str(project) for project in projects], counts, set(), []

    def delete_model(self, request: HttpRequest, obj: Project) -> None:
        # Through the console's service: keys revoked at once, rows removed in short batches.
        project_delete(project=obj, actor=actor_for(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Project]) -> None:
        for project in queryset:
            project_delete(project=project, actor=actor_for(request))

    def save_model(self, request: HttpRequest, obj: Project, form: Any, change: bool) -> None:
        # Through the service, like every other entry point: the period and reset time set, one audit row.
        if change:
            project = project_update(
                project=Project.objects.get(pk=obj.pk), actor=actor_for(request), name=obj.name,
                max_budget=obj.max_budget, timezone=obj.timezone, duration=obj.duration,
                duration_days=obj.duration_days, alert_thresholds=obj.alert_thresholds,
                alert_webhook_url=obj.alert_webhook_url, alert_email=obj.alert_email,
            )
        else:
            project = project_create(
                name=obj.name, actor=actor_for(request), max_budget=obj.max_budget, timezone=obj.timezone,
                duration=obj.duration, duration_days=obj.duration_days,
            )
            project = project_update(
                project=project, actor=actor_for(request), alert_thresholds=obj.alert_thresholds,
                alert_webhook_url=obj.alert_webhook_url, alert_email=obj.alert_email,
            ) if (obj.alert_webhook_url or obj.alert_email) else project
        obj.pk = project.pk
        obj.refresh_from_db()


class ModelSpendInline(MoneyDisplay, admin.TabularInline):
    model = ModelSpend
    extra = 0
    can_delete = False
    readonly_fields = ("model", "spend", "prompt_tokens", "completion_tokens")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(UserBudget)
class UserBudgetAdmin(MoneyAdmin):
    list_display = ("user_id", "project", "total_budget", "current_spend", "held", "utilisation_display",
                    "duration", "next_reset_at", "console_link")
    list_select_related = ("project",)
    search_fields = ("user_id", "project__name")
    list_filter = ("duration", "project")
    readonly_fields = ("current_spend", "held", "period_start", "next_reset_at", "created_at", "updated_at",
                       "hosted_model_cost", "hosted_period_start")
    fields = ("project", "user_id", "total_budget", "duration", "duration_days", "current_spend", "held",
              "period_start",
              "next_reset_at", "created_at", "updated_at", "hosted_model_cost",
              "hosted_period_start")
    inlines = [ModelSpendInline]
    actions = ["reset_selected"]

    @admin.display(description="Used")
    def utilisation_display(self, obj: UserBudget) -> str:
        used = obj.utilisation
        return "—" if used is None else f"{used:.1f}%"

    @admin.display(description="Console")
    def console_link(self, obj: UserBudget) -> str:
        try:
            return format_html('<a href="{}">open</a>', obj.get_absolute_url())
        except NoReverseMatch:
            return "—"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[Any]:
        # The owner of a budget is fixed once it exists.
        fields = super().get_readonly_fields(request, obj)
        return [*fields, "project", "user_id"] if obj else fields

    def save_model(self, request: HttpRequest, obj: UserBudget, form: Any, change: bool) -> None:
        budget, _ = budget_set(
            project=obj.project, user_id=obj.user_id, total_budget=obj.total_budget, duration=obj.duration,
            duration_days=obj.duration_days, actor=actor_for(request),
        )
        obj.pk = budget.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: UserBudget) -> None:
        budget_delete(budget=obj, actor=actor_for(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[UserBudget]) -> None:
        for budget in queryset:
            budget_delete(budget=budget, actor=actor_for(request))

    @admin.action(description="Reset selected budgets (spend to zero)")
    def reset_selected(self, request: HttpRequest, queryset: QuerySet[UserBudget]) -> None:
        count = 0
        for budget in queryset:
            budget_reset(budget=budget, actor=actor_for(request))
            count += 1
        self.message_user(request, f"Reset {count} budget(s).", messages.SUCCESS)


@admin.register(CostEvent)
class CostEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "project", "user_id", "model", "prompt_tokens", "completion_tokens", "cost",
                    "source")
    list_select_related = ("project",)
    search_fields = ("user_id", "project__name", "model", "idempotency_key")
    list_filter = ("source", "project")
    date_hierarchy = "created_at"
    show_full_result_count = False  # counting a million ledger rows per page view is slow


@admin.register(Reservation)
class ReservationAdmin(ReadOnlyAdmin):
    """Holds change only through the services (reserve, settle, release, expiry), never by hand."""

    list_display = ("created_at", "project", "user_id", "model", "amount", "status", "expires_at", "settled_cost")
    list_filter = ("status", "project")
    search_fields = ("user_id", "idempotency_key")
    list_select_related = ("project",)


@admin.register(BudgetPeriod)
class BudgetPeriodAdmin(ReadOnlyAdmin):
    list_display = ("user_id", "project", "period_start", "period_end", "spend", "total_budget", "reason")
    list_select_related = ("project",)
    search_fields = ("user_id", "project__name")
    list_filter = ("reason", "project")
    date_hierarchy = "period_start"


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "provider", "mode", "input_cost_per_token", "output_cost_per_token",
                    "cache_read_input_token_cost", "max_input_tokens", "source", "updated_at")
    search_fields = ("model", "provider")
    list_filter = ("provider", "mode", "source")
    readonly_fields = ("source", "updated_at")

    def save_model(self, request: HttpRequest, obj: ModelPrice, form: Any, change: bool) -> None:
        price_save_edited(price=obj)  # load_prices leaves rows edited here alone


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "project", "prefix", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("project",)
    search_fields = ("name", "prefix", "project__name")
    list_filter = ("project",)
    readonly_fields = ("project", "name", "prefix", "key_hash", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke_selected"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A key's secret is shown once when created: create keys with the console or create_project.
        return False

    @admin.action(description="Revoke selected keys")
    def revoke_selected(self, request: HttpRequest, queryset: QuerySet[ApiKey]) -> None:
        for key in queryset:
            api_key_revoke(key=key, actor=actor_for(request))
        self.message_user(request, f"Revoked {queryset.count()} key(s).", messages.SUCCESS)


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "project", "user_id", "action", "actor")
    list_select_related = ("project",)
    search_fields = ("user_id", "project__name", "actor", "action")
    list_filter = ("action", "project")
    date_hierarchy = "created_at"


@admin.register(Alert)
class AlertAdmin(MoneyAdmin):
    list_display = ("created_at", "project", "kind", "scope", "user_id", "subject", "threshold", "spend", "limit",
                    "delivered_at", "attempts")
    list_select_related = ("project",)
    search_fields = ("user_id", "subject", "project__name")
    list_filter = ("kind", "scope", "threshold", "project")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Alert._meta.fields]
    actions = ["retry_delivery"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.action(description="Retry delivery of selected undelivered alerts")
    def retry_delivery(self, request: HttpRequest, queryset: QuerySet[Alert]) -> None:
        count = sum(alert_retry(alert=alert, actor=actor_for(request)) for alert in queryset)
        self.message_user(request, f"Queued {count} alert(s) for delivery.", messages.SUCCESS)


def admin_url_for(obj: Any) -> str:
    """The admin change page of `obj` (used by the console to link prices)."""
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


@admin.register(Limit)
class LimitAdmin(ReadOnlyAdmin):
    """Limits are listed here and changed on the console's Limits page or the API (audited)."""

    list_display = ("project", "scope", "subject", "model", "unit", "window", "amount", "raised", "used", "held",
                    "mode", "resets_at", "raises_end_at")
    list_select_related = ("project",)
    list_filter = ("scope", "unit", "window", "mode", "project")
    search_fields = ("subject", "model", "project__name")


@admin.register(LimitIncrease)
class LimitIncreaseAdmin(ReadOnlyAdmin):
    """Temporary raises: made and ended on the console's Limits page or the API (audited)."""

    list_display = ("limit", "amount", "starts_at", "ends_at", "ended_at", "actor", "request")
    list_select_related = ("limit", "request")
    search_fields = ("actor", "limit__subject")


@admin.register(LimitRequest)
class LimitRequestAdmin(ReadOnlyAdmin):
    """Limit requests: decided on the console's Requests page (audited), never here."""

    list_display = ("created_at", "project", "user_id", "limit", "amount", "status", "requested_by", "decided_by")
    list_select_related = ("project", "limit")
    list_filter = ("status", "project")
    search_fields = ("user_id", "requested_by", "decided_by", "project__name")


class TeamMemberInline(admin.TabularInline):
    model = TeamMember
    fields = ("user_id",)
    readonly_fields = fields
    extra = 0
    can_delete = False
    verbose_name_plural = "Members (change them on the console's Teams page)"

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Team)
class TeamAdmin(ReadOnlyAdmin):
    list_display = ("name", "project", "created_at")
    list_select_related = ("project",)
    list_filter = ("project",)
    search_fields = ("name", "project__name", "members__user_id")
    inlines = (TeamMemberInline,)
