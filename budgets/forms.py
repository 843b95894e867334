"""The console's forms (rendered with crispy-forms, Bootstrap 5).

Forms check the shape of the input; the services still validate everything they are
given, and a service's InvalidInput is shown on the form (views call `add_error`).
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta
from decimal import Decimal
from functools import lru_cache
from typing import Any, cast
from urllib.parse import urlencode
from zoneinfo import ZoneInfo, available_timezones

from crispy_forms.helper import FormHelper
from crispy_forms.layout import Column, Field, Layout, Row
from django import forms
from django.contrib.auth import get_user_model, password_validation
from django.core.exceptions import ValidationError

from .base.errors import InvalidInput
from .base.validation import (
    MAX_FALLBACKS,
    parse_alert_thresholds,
    parse_fallbacks,
    validate_limit_thresholds,
    validate_user_id,
)
from .models import Duration, Limit, Role
from .selectors.console import DateRange

# A user budget or a project cap above this is almost certainly a typo (and on SQLite
# a money column holds at most about $9.2 million).
MAX_AMOUNT = Decimal(1000000)
MAX_RANGE_DAYS = 731
RANGE_CHOICES = (("7", "7 days"), ("30", "30 days"), ("90", "90 days"))
DEFAULT_RANGE_DAYS = 30


def _helper(*fields: Any, inline: bool = False) -> FormHelper:
    """A helper that renders fields only: templates write the <form> tag, CSRF token and buttons."""
    helper = FormHelper()
    helper.form_tag = False
    helper.disable_csrf = True
    if fields:
        helper.layout = Layout(*fields)
    if inline:
        helper.field_class = "mb-0"
    return helper


def plain_amount(amount: Decimal | None) -> str | None:
    """An amount as a person types it: 44 rather than 44.000000000000."""
    if amount is None:
        return None
    text = format(amount.normalize(), "f")
    return text


def money_field(label: str, *, required: bool = True, help_text: str = "") -> forms.DecimalField:
    return forms.DecimalField(
        label=label, required=required, min_value=Decimal(0), max_value=MAX_AMOUNT, max_digits=19,
        decimal_places=12, help_text=help_text,
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal", "placeholder": "0.00"}),
    )


class BudgetForm(forms.Form):
    """Change a user's budget: amount and reset period."""

    total_budget = money_field("Budget (USD)", help_text="What the user may spend per period.")
    duration = forms.ChoiceField(label="Resets", choices=Duration.choices, initial=Duration.MONTHLY)
    duration_days = forms.IntegerField(
        label="Every N days", required=False, min_value=1, max_value=36_525,
        help_text="Only for “Every N days”.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper(
            Row(Column("total_budget", css_class="col-sm-5"), Column("duration", css_class="col-sm-4"),
                Column("duration_days", css_class="col-sm-3")),
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("duration") == Duration.DAYS and not data.get("duration_days"):
            self.add_error("duration_days", "Give the number of days for “Every N days”.")
        if data.get("duration") != Duration.DAYS:
            data["duration_days"] = None
        return data


class CreateBudgetForm(BudgetForm):
    """Create (or replace) a user's budget."""

    user_id = forms.CharField(label="User", max_length=255, help_text="The id your application uses.",
                              widget=forms.TextInput(attrs={"placeholder": "alice@example.com"}))

    field_order = ("user_id", "total_budget", "duration", "duration_days")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper(
            Row(Column("user_id", css_class="col-md-4"), Column("total_budget", css_class="col-md-3"),
                Column("duration", css_class="col-md-3"), Column("duration_days", css_class="col-md-2")),
        )

    def clean_user_id(self) -> str:
        user_id = self.cleaned_data["user_id"]
        if not user_id.strip():
            raise ValidationError("Give the user's id.")
        try:
            return validate_user_id(user_id)
        except InvalidInput as exc:
            raise ValidationError(exc.message) from None


BULK_DURATIONS = [(v, label) for v, label in Duration.choices if v != Duration.DAYS]
KEEP_PERIOD = "keep"
BULK_PERIOD_CHOICES = [(KEEP_PERIOD, "Keep each user’s period"), *BULK_DURATIONS]
IMPORT_MAX_BYTES = 2 * 1024 * 1024
IMPORT_MAX_ROWS = 10_000
IMPORT_HEADER = ["user_id", "total_budget", "duration"]


class BulkBudgetForm(forms.Form):
    """The users list's bulk action: one budget for every selected user, or reset them all."""

    user_ids = forms.MultipleChoiceField(required=False)  # choices: any id; the service checks each
    op = forms.ChoiceField(choices=[("set", "Set budget"), ("reset", "Reset spend")])
    total_budget = money_field("Budget (USD)", required=False)
    # "keep" by default: one amount for users with different periods must not make them all monthly.
    duration = forms.ChoiceField(label="Resets", choices=BULK_PERIOD_CHOICES, initial=KEEP_PERIOD, required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = cast(forms.MultipleChoiceField, self.fields["user_ids"])
        field.valid_value = lambda value: True  # type: ignore[method-assign]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("user_ids"):
            raise ValidationError("Select at least one user.")
        if data.get("op") == "set" and data.get("total_budget") is None:
            self.add_error("total_budget", "Give the budget to set.")
        if data.get("duration") in ("", KEEP_PERIOD):
            data["duration"] = None  # no period sent, or "keep": each user keeps their own
        return data


class ImportRow:
    """One line of a budget CSV: what it says, and (once checked) its values or why it is wrong.

    The form only reads the CSV's shape (columns, a user twice); the view checks each row's values
    with `services.budget_row_check`, the check the apply runs too.
    """

    def __init__(self, line: int, user_id: str, raw_amount: str, raw_duration: str, error: str = ""):
        self.line, self.user_id, self.raw_amount, self.raw_duration, self.error = (
            line, user_id, raw_amount, raw_duration, error)
        self.total_budget: Decimal | None = None
        self.duration: str | None = raw_duration


def parse_budget_csv(text: str) -> list[ImportRow]:
    """`user_id,total_budget,duration` lines (a header line is optional); each row, or its shape error."""
    rows: list[ImportRow] = []
    seen: set[str] = set()
    reader = csv.reader(io.StringIO(text))
    try:
        for number, fields in enumerate(reader, start=1):
            if not "".join(fields).strip():  # an empty line, or only blank fields
                continue
            if number == 1 and [f.strip().lower() for f in fields] == IMPORT_HEADER:
                continue
            if len(fields) != 3:
                rows.append(ImportRow(number, ",".join(fields)[:80], "", "",
                                      f"expected 3 columns (user_id,total_budget,duration), got {len(fields)}"))
            else:
                user_id = fields[0]  # as written: an id may begin or end with a space
                error = f"{user_id} appears twice in the file" if user_id in seen else ""
                seen.add(user_id)
                rows.append(ImportRow(number, user_id, fields[1].strip(), fields[2].strip().lower() or Duration.NONE,
                                      error))
            if len(rows) > IMPORT_MAX_ROWS:
                raise ValidationError(f"At most {IMPORT_MAX_ROWS:,} rows per file.")
    except csv.Error as exc:  # a field over the reader's limit (128 KiB)
        raise ValidationError(f"Line {reader.line_num}: a field is too long, or the line is not CSV ({exc}).") from None
    if not rows:
        raise ValidationError("The file has no rows.")
    return rows


class BudgetImportForm(forms.Form):
    """A CSV upload (the preview), or the same text sent back from the preview (the confirm step)."""

    file = forms.FileField(label="CSV file", required=False, help_text="Columns: user_id,total_budget,duration.")
    # strip=False: the confirm step must apply exactly the text the preview showed (an id may start with a space).
    text = forms.CharField(required=False, widget=forms.HiddenInput, max_length=IMPORT_MAX_BYTES, strip=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper("file")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        upload = data.get("file")
        if upload is not None:
            if upload.size > IMPORT_MAX_BYTES:
                raise ValidationError(f"The file is larger than {IMPORT_MAX_BYTES // 1024 // 1024} MB.")
            try:
                data["text"] = upload.read().decode("utf-8-sig")
            except UnicodeDecodeError:
                raise ValidationError("The file is not UTF-8 text.") from None
        if not data.get("text"):
            raise ValidationError("Choose a CSV file.")
        data["rows"] = parse_budget_csv(data["text"])
        return data


class ApiKeyForm(forms.Form):
    name = forms.CharField(label="Key name", max_length=100,
                           widget=forms.TextInput(attrs={"placeholder": "production backend"}),
                           help_text="To recognise the key later, e.g. the app that uses it.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper("name")


@lru_cache(maxsize=1)
def timezone_choices() -> list[tuple[str, str]]:
    # "localtime" is whatever the host says, not a stable setting (services reject it too).
    return [(name, name) for name in sorted(available_timezones() - {"localtime"})]


PERIOD_CHOICES = [(v, label) for v, label in Duration.choices if v != Duration.DAYS]


class ProjectSettingsForm(forms.Form):
    name = forms.CharField(label="Name", max_length=200, required=False,
                           help_text="LiteLLM's project_name; clients that use the old name stop finding it.")
    duration = forms.ChoiceField(label="Cap resets", choices=PERIOD_CHOICES, required=False,
                                 help_text="When the project's spend starts again at zero.")
    max_budget = money_field(
        "Project cap (USD)", required=False,
        help_text="Project-wide spend limit; leave empty for no cap. Checks answer “not allowed” once it is reached.",
    )
    timezone = forms.ChoiceField(label="Time zone", help_text="Days, weeks and months start at midnight here.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        cast(forms.ChoiceField, self.fields["timezone"]).choices = timezone_choices()
        self.helper = _helper(Row(Column("name", css_class="col-md-6"), Column("duration", css_class="col-md-6")),
                              Row(Column("max_budget", css_class="col-md-6"), Column("timezone", css_class="col-md-6")))

    def changes(self) -> dict[str, Any]:
        """What to give project_update: a name or period left empty stays as it is."""
        data = self.cleaned_data
        changes = {"max_budget": data["max_budget"], "timezone": data["timezone"]}
        if data.get("name", "").strip():
            changes["name"] = data["name"].strip()
        if data.get("duration"):
            changes["duration"] = data["duration"]
        return changes


class NewProjectForm(ProjectSettingsForm):
    """A new project: its name is required; the creator becomes its owner."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"timezone": "UTC", "duration": Duration.MONTHLY})
        super().__init__(*args, **kwargs)
        self.fields["name"].required = True
        self.fields["name"].help_text = "Also LiteLLM's project_name."


class ProjectDeleteForm(forms.Form):
    confirm = forms.CharField(label="Type the project's name to confirm", max_length=200)

    def __init__(self, *args: Any, project_name: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.project_name = project_name
        self.helper = _helper("confirm")

    def clean_confirm(self) -> str:
        typed = self.cleaned_data["confirm"]
        if typed != self.project_name:
            raise ValidationError("That is not the project's name: nothing was deleted.")
        return typed


class InviteForm(forms.Form):
    invitee = forms.CharField(label="Email or username", max_length=254,
                              help_text="Receives a link to accept; nobody joins before accepting.")
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.VIEWER)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper(Row(Column("invitee", css_class="col-md-8"), Column("role", css_class="col-md-4")))


class InvitationSignupForm(forms.Form):
    """A new account on accepting an invitation: its email is the invited address."""

    username = forms.CharField(label="Username", max_length=150)
    password1 = forms.CharField(label="Password", strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))
    password2 = forms.CharField(label="Password again", strip=False,
                                widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}))

    def __init__(self, *args: Any, email: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.email = email
        self.helper = _helper("username", "password1", "password2")

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        first, second = data.get("password1"), data.get("password2")
        if first and second and first != second:
            self.add_error("password2", "The two passwords differ.")
        elif first:
            account = get_user_model()(username=data.get("username", ""), email=self.email)
            try:
                password_validation.validate_password(first, account)
            except ValidationError as exc:
                self.add_error("password1", exc)
        return data


class MemberRoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class AlertSettingsForm(forms.Form):
    alert_thresholds = forms.CharField(
        label="Thresholds (%)", required=False, max_length=200,
        help_text="Percentages of a budget that raise an alert, separated by commas, e.g. 80, 100.",
    )
    alert_webhook_url = forms.URLField(label="Webhook URL", required=False, max_length=500,
                                       assume_scheme="https",
                                       help_text="Receives a signed JSON POST for each alert.")
    alert_email = forms.EmailField(label="Email", required=False, help_text="Receives an email for each alert.")
    # The URL is the Slack channel's secret: never written back into the page, shown by its mask.
    slack_webhook_url = forms.URLField(
        label="Slack webhook URL", required=False, max_length=500, assume_scheme="https",
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off", "spellcheck": "false"}),
        help_text="A Slack incoming webhook (https://hooks.slack.com/services/…): each alert is posted to its channel.",
    )
    slack_remove = forms.BooleanField(label="Stop posting alerts to Slack", required=False)
    anomaly_alerts = forms.BooleanField(
        label="Spend anomaly alerts", required=False,
        help_text="Alert once a day when a user's or team's spend today is over the multiple of its trailing "
                  "14-day daily average (never for users with under 7 days of history).")
    anomaly_multiple = forms.DecimalField(
        label="Anomaly multiple (×)", required=False, min_value=Decimal("1.1"), max_value=Decimal(1000), max_digits=6,
        decimal_places=2, help_text="Times the daily average, e.g. 3.",
        widget=forms.NumberInput(attrs={"step": "0.01", "inputmode": "decimal"}))
    anomaly_floor = money_field("Anomaly floor (USD)", required=False,
                                help_text="Spend today below this is never an anomaly.")

    def __init__(self, *args: Any, slack_mask: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        fields: list[Any] = ["alert_thresholds", "alert_webhook_url", "alert_email", "slack_webhook_url"]
        if slack_mask:
            self.fields["slack_webhook_url"].widget.attrs["placeholder"] = slack_mask
            self.fields["slack_webhook_url"].help_text = (
                f"Alerts go to {slack_mask}. Leave this empty to keep it, or paste another URL to replace it.")
            fields.append("slack_remove")
        fields += ["anomaly_alerts", Row(Column("anomaly_multiple", css_class="col-md-6"),
                                         Column("anomaly_floor", css_class="col-md-6"))]
        self.helper = _helper(*fields)

    def anomaly_change(self) -> dict[str, Any]:
        """What to give project_update for the spend-anomaly settings."""
        data = self.cleaned_data
        given = {name: data[name] for name in ("anomaly_multiple", "anomaly_floor") if data.get(name) is not None}
        return {"anomaly_alerts": bool(data.get("anomaly_alerts")), **given}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("slack_remove") and data.get("slack_webhook_url"):
            self.add_error("slack_remove", "Paste a new Slack URL or stop posting to Slack, not both.")
        return data

    def slack_change(self) -> dict[str, str]:
        """What to give project_update for Slack: a new URL, "" to remove it, nothing to keep it."""
        if self.cleaned_data.get("slack_remove"):
            return {"slack_webhook_url": ""}
        url = self.cleaned_data.get("slack_webhook_url")
        return {"slack_webhook_url": url} if url else {}

    def clean_alert_thresholds(self) -> list[int]:
        try:
            return parse_alert_thresholds(self.cleaned_data["alert_thresholds"])
        except InvalidInput as exc:
            raise ValidationError(exc.message) from None


class FallbacksForm(forms.Form):
    fallbacks = forms.CharField(
        label="Fallback models", required=False, max_length=20_000,
        widget=forms.Textarea(attrs={"rows": 4, "spellcheck": "false",
                                     "placeholder": "gpt-4o → gpt-4o-mini\nclaude-sonnet-4-5 → claude-haiku-4-5"}),
        help_text=f"One model a line, then → and up to {MAX_FALLBACKS} models to suggest in order, separated by "
                  f"commas. A refused call of the model is told the first one whose worst case still fits.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper("fallbacks")

    def clean_fallbacks(self) -> dict[str, list[str]]:
        try:
            return parse_fallbacks(self.cleaned_data["fallbacks"])
        except InvalidInput as exc:
            raise ValidationError(exc.message) from None


class RangeForm(forms.Form):
    """The date range of a chart page: the last 7/30/90 days or from–to (local days)."""

    days = forms.TypedChoiceField(label="Last", choices=RANGE_CHOICES, coerce=int, required=False)
    start = forms.DateField(label="From", required=False, widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", required=False, widget=forms.DateInput(attrs={"type": "date"}))

    def __init__(self, *args: Any, zone: ZoneInfo, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"days": DEFAULT_RANGE_DAYS})
        super().__init__(*args, **kwargs)
        self.zone = zone
        self.helper = _helper(
            Row(Column(Field("days"), css_class="col-6 col-md-auto"),
                Column(Field("start"), css_class="col-6 col-md-auto"),
                Column(Field("end"), css_class="col-6 col-md-auto")),
        )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end and start > end:
            raise ValidationError("The range must start before it ends.")
        if start and end and (end - start).days >= MAX_RANGE_DAYS:
            raise ValidationError(f"Choose a range of at most {MAX_RANGE_DAYS} days.")
        return data

    def date_range(self) -> DateRange:
        """The chosen range; the default (last 30 days) when nothing or something invalid was chosen."""
        default = DateRange.last_days(DEFAULT_RANGE_DAYS, self.zone)
        if not self.is_bound or not self.is_valid():
            return default
        start: date | None = self.cleaned_data.get("start")
        end: date | None = self.cleaned_data.get("end")
        if start or end:
            today = default.end
            if end is None:
                end = max(today, start) if start is not None else today
            if start is None:
                start = end - timedelta(days=DEFAULT_RANGE_DAYS - 1)
            start = max(start, end - timedelta(days=MAX_RANGE_DAYS - 1))
            return DateRange(start, end, self.zone)
        return DateRange.last_days(self.cleaned_data.get("days") or DEFAULT_RANGE_DAYS, self.zone)

    def query(self) -> str:
        """The chosen range as a query string ("" for the default), for the export link."""
        if not self.is_bound or not self.is_valid():
            return ""
        return urlencode({k: str(v) for k, v in self.cleaned_data.items() if v})


class UserSearchForm(forms.Form):
    q = forms.CharField(label="Search users", required=False, max_length=255,
                        widget=forms.TextInput(attrs={"placeholder": "Search users", "type": "search"}))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper(Field("q", wrapper_class="mb-0"), inline=True)
        self.helper.form_show_labels = False

    def search(self) -> str:
        return self.cleaned_data.get("q", "").strip() if self.is_valid() else ""


# --- limits and teams -------------------------------------------------------------------------


def limit_amount_field() -> forms.DecimalField:
    return forms.DecimalField(
        label="Limit", min_value=Decimal(0), max_digits=24, decimal_places=12,
        help_text="Dollars, or a whole number of tokens or requests.",
        widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal", "placeholder": "0"}))


class LimitForm(forms.Form):
    """A new limit; the service checks the subject (an existing team or key, a user id, a tag) and the model."""

    scope = forms.ChoiceField(label="Scope", choices=Limit.Scope.choices, initial=Limit.Scope.USER)
    subject = forms.CharField(label="Subject", required=False, max_length=255,
                              widget=forms.TextInput(attrs={"placeholder": "alice, research, summarizer…"}),
                              help_text="The user id, team, API key name or tag; empty for the project.")
    model = forms.CharField(label="Model", required=False, max_length=255,
                            widget=forms.TextInput(attrs={"placeholder": "every model"}),
                            help_text="Only this model's calls (optional).")
    unit = forms.ChoiceField(label="Unit", choices=Limit.Unit.choices, initial=Limit.Unit.USD)
    window = forms.ChoiceField(label="Window", choices=Limit.Window.choices, initial=Limit.Window.MONTH)
    amount = limit_amount_field()
    mode = forms.ChoiceField(label="Mode", choices=Limit.Mode.choices, initial=Limit.Mode.HARD)
    thresholds = forms.CharField(
        label="Alert thresholds (%)", required=False, max_length=200,
        widget=forms.TextInput(attrs={"placeholder": "the project's"}),
        help_text="This limit's own, e.g. 50, 90, 100 (at most 10); empty: the project's list.")
    grace_percent = forms.IntegerField(
        label="Grace (%)", required=False, min_value=0, max_value=100,
        widget=forms.NumberInput(attrs={"placeholder": "none"}),
        help_text="A hard limit refuses only past the limit × (1 + grace/100); the alerts still fire at 100 %.")
    rollover_max = forms.DecimalField(
        label="Rollover max ($)", required=False, min_value=Decimal(0), max_value=MAX_AMOUNT, max_digits=19,
        decimal_places=12, widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal",
                                                           "placeholder": "none"}),
        help_text="At each reset the unused part, up to this, becomes a credit for the next window. Only a "
                  "user's or a team's dollar limit on every model with a window.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.helper = _helper(
            Row(Column("scope", css_class="col-md-3"), Column("subject", css_class="col-md-5"),
                Column("model", css_class="col-md-4")),
            Row(Column("unit", css_class="col-md-3"), Column("window", css_class="col-md-3"),
                Column("amount", css_class="col-md-3"), Column("mode", css_class="col-md-3")),
            Row(Column("thresholds", css_class="col-md-4"), Column("grace_percent", css_class="col-md-4"),
                Column("rollover_max", css_class="col-md-4")))

    def clean_thresholds(self) -> list[int] | None:
        return limit_thresholds(self.cleaned_data["thresholds"])

    def clean_rollover_max(self) -> dict[str, Decimal] | None:
        """The service's shape ({"max": dollars}); empty: none."""
        value = self.cleaned_data["rollover_max"]
        return None if value is None else {"max": value}


def limit_thresholds(text: str) -> list[int] | None:
    """A limit's thresholds as typed ("50, 90, 100"); empty: None (the project's list)."""
    if not text.strip():
        return None
    try:
        return validate_limit_thresholds(parse_alert_thresholds(text, unique=False))
    except InvalidInput as exc:
        raise ValidationError(exc.message) from None


class LimitEditForm(forms.Form):
    """A limit's changes; grace and rollover change only when the form sent them (an empty one removes it)."""

    amount = limit_amount_field()
    mode = forms.ChoiceField(label="Mode", choices=Limit.Mode.choices)
    thresholds = forms.CharField(label="Alert thresholds (%)", required=False, max_length=200)
    grace_percent = LimitForm.base_fields["grace_percent"]
    rollover_max = LimitForm.base_fields["rollover_max"]

    def __init__(self, *args: Any, rollover_allowed: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rollover_allowed = rollover_allowed  # the row offers the rollover field (services.limits' rule)
        self.helper = _helper(Row(Column("amount", css_class="col-md-6"), Column("mode", css_class="col-md-6")),
                              "thresholds", "grace_percent", "rollover_max")

    def clean_thresholds(self) -> list[int] | None:
        return limit_thresholds(self.cleaned_data["thresholds"])

    clean_rollover_max = LimitForm.clean_rollover_max

    def changes(self) -> dict[str, Any]:
        """The service's keyword arguments: grace and rollover only if the form sent them."""
        data = self.cleaned_data
        changes = {"amount": data["amount"], "mode": data["mode"], "thresholds": data["thresholds"]}
        for field, argument in (("grace_percent", "grace_percent"), ("rollover_max", "rollover")):
            if field in self.data:
                changes[argument] = data[field]
        return changes


def rollover_allowed(scope: str, unit: str, model: str | None, window: str) -> bool:
    """Whether a limit may roll over (services.limits.validate_rollover's rule), to offer the field."""
    return (scope in (Limit.Scope.USER, Limit.Scope.TEAM) and unit == Limit.Unit.USD and not model
            and window != Limit.Window.LIFETIME)


class TeamForm(forms.Form):
    """A team's name and its members, one user id a line (or separated by commas)."""

    name = forms.CharField(label="Team name", max_length=64,
                           widget=forms.TextInput(attrs={"placeholder": "research"}),
                           help_text="Letters, digits and _ . : -")
    members = forms.CharField(label="Members", required=False, widget=forms.Textarea(attrs={"rows": 3}),
                              help_text="User ids, one a line or separated by commas. Replaces the list.")

    def __init__(self, *args: Any, fixed_name: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if fixed_name:
            self.fields["name"].required = False
            self.fields["name"].widget = forms.HiddenInput()
        self.helper = _helper("name", "members")

    def clean_members(self) -> list[str]:
        text = self.cleaned_data.get("members") or ""
        return [part.strip() for line in text.splitlines() for part in line.split(",") if part.strip()]


# --- temporary raises and limit requests --------------------------------------------------------


def _aware(value: Any, tz: str) -> Any:
    """A date and time typed in the console, read in the project's time zone (the pages show times in it)."""
    if value is None:
        return None
    return value.replace(tzinfo=ZoneInfo(tz))


def _until_field(label: str, help_text: str) -> forms.DateTimeField:
    return forms.DateTimeField(label=label, required=False, help_text=help_text,
                               input_formats=["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M"],
                               widget=forms.DateTimeInput(attrs={"type": "datetime-local"}, format="%Y-%m-%dT%H:%M"))


class RaiseForm(forms.Form):
    """A temporary raise: how much more, until a date and time (the project's time zone) or for N windows."""

    amount = forms.DecimalField(label="Raise by", min_value=Decimal(0), max_digits=24, decimal_places=12,
                                widget=forms.NumberInput(attrs={"step": "any", "inputmode": "decimal"}))
    until = _until_field("Until", "In the project's time zone.")
    windows = forms.IntegerField(label="Or for windows", required=False, min_value=1, max_value=1000,
                                 help_text="Until the end of the Nth window (this one is 1).")

    def __init__(self, *args: Any, tz: str = "UTC", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tz = tz

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if self.errors:
            return data
        if (data.get("until") is None) == (data.get("windows") is None):
            raise ValidationError("Give the raise's end: a date and time, or a number of windows (one of them).")
        data["until"] = _aware(data.get("until"), self.tz)
        return data


class DecideForm(forms.Form):
    """Approve a request (a temporary raise, the end editable; or a permanent change) or deny it, with a note."""

    DECISIONS = (("raise", "Approve as a temporary raise"), ("permanent", "Approve as a permanent change"),
                 ("deny", "Deny"))

    decision = forms.ChoiceField(label="Decision", choices=DECISIONS)
    amount = forms.DecimalField(label="Amount", required=False, min_value=Decimal(0), max_digits=24,
                                decimal_places=12, widget=forms.NumberInput(attrs={"step": "any"}))
    until = _until_field("Until", "The raise's end, in the project's time zone.")
    windows = forms.IntegerField(label="Or for windows", required=False, min_value=1, max_value=1000)
    note = forms.CharField(label="Note", required=False, max_length=2000)

    def __init__(self, *args: Any, tz: str = "UTC", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tz = tz

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        data["until"] = _aware(data.get("until"), self.tz)
        return data


class LimitRequestForm(forms.Form):
    """A request made in the console, on a user's behalf (another owner or manager decides it)."""

    user_id = forms.CharField(label="User", max_length=255)
    limit_id = forms.IntegerField(label="Limit id", required=False, min_value=1,
                                  help_text="Empty: the user's binding limit.")
    amount = forms.DecimalField(label="Amount", min_value=Decimal(0), max_digits=24, decimal_places=12,
                                widget=forms.NumberInput(attrs={"step": "any"}))
    until = _until_field("Until", "Optional; in the project's time zone.")
    reason = forms.CharField(label="Reason", required=False, max_length=2000)

    def __init__(self, *args: Any, tz: str = "UTC", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tz = tz
        self.helper = _helper(Row(Column("user_id", css_class="col-md-3"), Column("limit_id", css_class="col-md-2"),
                                  Column("amount", css_class="col-md-2"), Column("until", css_class="col-md-3"),
                                  Column("reason", css_class="col-md-2")))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        data["until"] = _aware(data.get("until"), self.tz)
        return data


class GrantForm(forms.Form):
    """A credit (a grant) for a user or a team; the service checks the amount, the expiry and the note again."""

    amount = money_field("Amount ($)", help_text="Prepaid dollars, used after the periodic limits are.")
    expires_at = _until_field("Expires at", "Optional; in the project's time zone. Empty: never.")
    priority = forms.IntegerField(label="Priority", required=False, min_value=0, max_value=1_000_000,
                                  widget=forms.NumberInput(attrs={"placeholder": "1"}),
                                  help_text="Lower is used first (default 1).")
    note = forms.CharField(label="Note", required=False, max_length=500)

    def __init__(self, *args: Any, tz: str = "UTC", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tz = tz
        self.helper = _helper(Row(Column("amount", css_class="col-md-2"), Column("expires_at", css_class="col-md-3"),
                                  Column("priority", css_class="col-md-2"), Column("note", css_class="col-md-5")))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        data["expires_at"] = _aware(data.get("expires_at"), self.tz)
        return data
