"""Spend anomalies: an `anomaly` alert when a user's (or a team's) spend today jumps over its trailing
daily average. A beat task runs `anomalies_detect` every 15 minutes.

The rule, per project with `anomaly_alerts` on (the default):
- today is the project's local day (the daily rollups' day), so far;
- history: the days since the subject's first day with spend before today; under
  MIN_HISTORY_DAYS (7) there is no alert (a new user's first big day is not an anomaly);
- baseline: the spend over the 14 days before today (fewer when the history is shorter) divided by
  that number of days: a daily average, days without spend counting as zero;
- an anomaly: today's spend is more than `anomaly_multiple` (default 3) × the baseline and at
  least `anomaly_floor` (default $1);
- once per subject per local day (a unique constraint), naming the figures and the model the
  subject spent most on today.
Everything is read from the rollups (UserDay, SpendDay; a team is its members through TeamMember).
"""

from __future__ import annotations

from datetime import date, datetime, time
from zoneinfo import ZoneInfo

from django.utils.timezone import now as utcnow

from ..base.money import MONEY_PLACES
from ..models import Alert, Project
from ..selectors.anomalies import BASELINE_DAYS, DaySpend, members_of_team, teams_spending, top_model, users_spending
from .alerts import alerts_insert

MIN_HISTORY_DAYS = 7


def day_start(project: Project, day: date) -> datetime:
    """Midnight of a local day in the project's time zone (the anomaly's period_start)."""
    return datetime.combine(day, time(0), tzinfo=ZoneInfo(project.timezone))


def anomaly_of(project: Project, figures: DaySpend, day: date) -> Alert | None:
    """The (unsaved) anomaly alert these figures call for, or None."""
    if figures.first_day is None:
        return None
    history = (day - figures.first_day).days
    if history < MIN_HISTORY_DAYS:
        return None
    days = min(BASELINE_DAYS, history)
    baseline = (figures.trailing / days).quantize(MONEY_PLACES)
    multiple = project.anomaly_multiple
    if figures.today <= multiple * baseline or figures.today < project.anomaly_floor:
        return None
    users = [figures.subject] if figures.scope == "user" else members_of_team(project, figures.subject)
    top = top_model(project, day, users)
    details = {"baseline": str(baseline), "baseline_days": days, "multiple": str(multiple),
               "top_model": top[0] if top else None, "top_model_spend": str(top[1]) if top else None}
    return Alert(project=project, scope=figures.scope, kind=Alert.Kind.ANOMALY,
                 user_id=figures.subject if figures.scope == "user" else "", subject=figures.subject,
                 threshold=int(multiple * 100), period_start=day_start(project, day), spend=figures.today,
                 limit=max((multiple * baseline).quantize(MONEY_PLACES), project.anomaly_floor), details=details)


def project_anomalies(project: Project, *, at: datetime | None = None) -> int:
    """Raise the project's anomaly alerts of today not raised yet; returns how many."""
    at = at or utcnow()
    day = at.astimezone(ZoneInfo(project.timezone)).date()
    start = day_start(project, day)
    raised = {(scope, subject) for scope, subject in Alert.objects.filter(
        project=project, kind=Alert.Kind.ANOMALY, period_start=start).values_list("scope", "subject")}
    floor = project.anomaly_floor
    candidates = [
        alert for figures in users_spending(project, day, floor) + teams_spending(project, day, floor)
        if (figures.scope, figures.subject) not in raised
        and (alert := anomaly_of(project, figures, day)) is not None
    ]
    return len(alerts_insert(project, candidates))


def anomalies_detect(*, at: datetime | None = None) -> int:
    """The beat task's work: every project with anomaly alerts on; returns how many alerts were raised."""
    return sum(project_anomalies(project, at=at)
               for project in Project.objects.filter(anomaly_alerts=True, deleting_since__isnull=True))
