"""Teams: set a team's members (replacing the list), put one user in a team or take them out, delete a team."""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.utils.timezone import now as utcnow

from ..base.errors import Conflict, InvalidInput, Unprocessable
from ..base.validation import validate_short_identifier
from ..models import Limit, Project, Team, TeamMember
from .admission import lock_project
from .audit import write_audit
from .common import validate_user_id
from .limits import limit_snapshot

MAX_MEMBERS = 10_000


def validate_team_name(name: Any) -> str:
    return validate_short_identifier(name, "a team name")


def _members_of(team: Team) -> list[str]:
    return list(TeamMember.objects.filter(team=team).order_by("user_id").values_list("user_id", flat=True))


def team_set(*, project: Project, name: Any, members: Any, actor: str) -> tuple[Team, bool]:
    """Create the team or replace its member list; returns (team, created).

    A user is in at most one team of a project: one already in another team is a Conflict naming it
    (take them out of that team first), and nothing is written.
    """
    name = validate_team_name(name)
    if not isinstance(members, list) or len(members) > MAX_MEMBERS:
        raise InvalidInput(f"members must be a list of at most {MAX_MEMBERS} user ids")
    users = sorted({validate_user_id(user) for user in members})
    with transaction.atomic():
        lock_project(project)  # one writer of a project's teams at a time
        team = Team.objects.filter(project=project, name=name).first()
        created = team is None
        others = dict(TeamMember.objects.filter(project=project, user_id__in=users)
                      .exclude(team=team).values_list("user_id", "team__name")[:1])
        if others:
            (user, other), = others.items()
            raise Conflict(f"user {user!r} is already in the team {other!r}: a user is in at most one team "
                           f"of a project (take them out of {other!r} first)")
        if team is None:
            team = Team.objects.create(project=project, name=name, created_at=utcnow())
            before = None
        else:
            before = {"name": name, "members": _members_of(team)}
            TeamMember.objects.filter(team=team).exclude(user_id__in=users).delete()
        present = set(TeamMember.objects.filter(team=team).values_list("user_id", flat=True))
        TeamMember.objects.bulk_create([TeamMember(team=team, project=project, user_id=user)
                                        for user in users if user not in present])
        write_audit(project_id=project.pk, action="team_create" if created else "team_update", actor=actor,
                    before=before, after={"name": name, "members": users})
    return team, created


def team_assign(*, project: Project, user_id: str, team: Any, actor: str) -> None:
    """Put a user in the named team (moving them out of another), or with None take them out of theirs."""
    user_id = validate_user_id(user_id)
    name = None if team is None else validate_team_name(team)
    with transaction.atomic():
        lock_project(project)
        target = None
        if name is not None:
            target = Team.objects.filter(project=project, name=name).first()
            if target is None:
                raise Unprocessable(
                    f"the project has no team named {name!r} (create it with PUT /api/v1/teams/{{team}})")
        current = TeamMember.objects.filter(project=project, user_id=user_id).select_related("team").first()
        if (current.team if current else None) == target:
            return
        if current is not None:
            current.delete()
        if target is not None:
            TeamMember.objects.create(team=target, project=project, user_id=user_id)
        write_audit(project_id=project.pk, action="team_member_set", actor=actor, user_id=user_id,
                    before={"team": current.team.name if current else None}, after={"team": name})


def team_delete(*, team: Team, actor: str) -> None:
    """Delete a team, its member list and its limits (the ledger keeps its calls)."""
    with transaction.atomic():
        lock_project(team.project)
        limits = Limit.objects.filter(project_id=team.project_id, scope=Limit.Scope.TEAM, subject=team.name)
        write_audit(project_id=team.project_id, action="team_delete", actor=actor,
                    before={"name": team.name, "members": _members_of(team),
                            "limits": [limit_snapshot(limit) for limit in limits]})
        limits.delete()
        Team.objects.filter(pk=team.pk).delete()
