"""Which limits apply to a call: the one definition admission, recording and the self-service read share."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, QuerySet

from ..models import Limit, Project, TeamMember

MAX_TAGS = 10


@dataclass(frozen=True)
class CallScope:
    """Who makes a call and on what: the project, its user, the API key's name, the tags, the model.

    `model` is the price table's name for the call's model when it has one (as pricing
    resolves it), so a limit on "gpt-4o" also covers calls that asked for "openai/gpt-4o".
    """

    project: Project
    user_id: str
    model: str = ""
    key_name: str | None = None
    tags: tuple[str, ...] = ()
    team: str | None = None


def team_of(project: Project, user_id: str) -> str | None:
    """The name of the user's team in the project, if any."""
    return (
        TeamMember.objects.filter(project=project, user_id=user_id).values_list("team__name", flat=True).first()
    )


def applicable_limits(call: CallScope, *, hard_only: bool = False) -> QuerySet[Limit]:
    """The project's limits that count this call: the project's, the team's, the user's, the key's and
    each tag's, each without a model or with the call's model; in id order (the lock order)."""
    subjects = Q(scope=Limit.Scope.PROJECT) | Q(scope=Limit.Scope.USER, subject=call.user_id)
    if call.team:
        subjects |= Q(scope=Limit.Scope.TEAM, subject=call.team)
    if call.key_name:
        subjects |= Q(scope=Limit.Scope.KEY, subject=call.key_name)
    if call.tags:
        subjects |= Q(scope=Limit.Scope.TAG, subject__in=call.tags)
    models = Q(model="") | Q(model=call.model) if call.model else Q(model="")
    limits = Limit.objects.filter(project=call.project).filter(subjects).filter(models)
    if hard_only:
        limits = limits.filter(mode=Limit.Mode.HARD)
    return limits.order_by("id")


def tags_text(tags: tuple[str, ...] | list[str]) -> str:
    """The ledger's form of a call's tags: ",a,b," (empty for none), filtered with tags__contains=",a,"."""
    return f",{','.join(sorted(set(tags)))}," if tags else ""
