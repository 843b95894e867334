"""Project members: invitations, change a role, remove.

Nobody becomes a member without consent: an owner invites an email address or a username, and
the membership starts when the invited person opens the signed, expiring link and accepts
(an existing account logged in, or a new account created with the invited address). Inviting
answers the same whatever accounts exist, so the form reveals nobody.

A project always keeps an owner: the last one can be neither removed nor demoted. The
project row is locked first (the lock order everywhere), so two owners demoting each other
at once cannot leave the project without one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User  # AUTH_USER_MODEL
from django.core import signing
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.utils.timezone import now as utcnow

from ..base.errors import InvalidInput
from ..models import Invitation, Membership, Project, Role
from .audit import actor_for_user, write_audit

LAST_OWNER = "a project keeps at least one owner: make someone else an owner first"


def _role(role: Any) -> str:
    if role not in Role.values:
        raise InvalidInput(f"role must be one of: {', '.join(Role.values)} (got {role!r})")
    return str(role)


def _who(user: User) -> dict[str, Any]:
    return {"user": user.get_username(), "user_pk": user.pk}


def member_add(*, project: Project, user: User, role: Any, actor: str, note: dict[str, Any] | None = None
               ) -> Membership:
    """Make an account a member (the project's creator, an accepted invitation); `note` goes into the audit row."""
    role = _role(role)
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if Membership.objects.filter(project=project, user_id=user.pk).exists():
            raise InvalidInput(f"{user.get_username()} is already a member of this project")
        membership = Membership.objects.create(project=project, user=user, role=role)
        write_audit(project_id=project.pk, action="member_add", actor=actor,
                    after={**_who(user), "role": role, **(note or {})})
    return membership


# --- invitations ------------------------------------------------------------------------------

INVITATION_SALT = "budgets.invitation"


def invitation_max_age() -> timedelta:
    return timedelta(days=settings.INVITATION_MAX_AGE_DAYS)


def _invitee(text: Any) -> tuple[str, bool]:
    """(invitee, is_email): an email address lower-cased, or a username as typed."""
    text = text.strip() if isinstance(text, str) else ""
    if not text:
        raise InvalidInput("give an email address or a username")
    if "@" not in text:
        return text, False
    try:
        validate_email(text)
    except ValidationError:
        raise InvalidInput(f"{text!r} is not a valid email address") from None
    return text.lower(), True


def _is_member(project: Project, invitee: str, is_email: bool) -> bool:
    """Members are listed with their usernames and emails on the page, so saying so reveals nothing."""
    members = Membership.objects.filter(project=project)
    if is_email:
        return members.filter(user__email__iexact=invitee).exists()
    return members.filter(user__username__iexact=invitee).exists()


def invitation_recipient(invitation: Invitation) -> str | None:
    """Where the link goes: the invited address, or the email of the invited username's account (if any)."""
    if invitation.is_email:
        return invitation.invitee
    accounts = get_user_model().objects.filter(username__iexact=invitation.invitee, is_active=True)
    emails = [email for email in accounts.values_list("email", flat=True)[:2] if email]
    return emails[0] if len(emails) == 1 else None


def member_invite(*, project: Project, invitee: Any, role: Any, invited_by: User, actor: str) -> Invitation:
    """Invite someone with a role (a pending invitation to the same person is replaced: its link dies).

    Nothing here depends on which accounts exist; the caller sends the link to
    `invitation_recipient(invitation)` and answers the same either way.
    """
    role = _role(role)
    text, is_email = _invitee(invitee)
    at = utcnow()
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if _is_member(project, text, is_email):
            raise InvalidInput(f"{text} is already a member of this project")
        Invitation.objects.filter(project=project, invitee__iexact=text, accepted_at=None,
                                  revoked_at=None).update(revoked_at=at)
        invitation = Invitation.objects.create(project=project, invitee=text, is_email=is_email, role=role,
                                               invited_by=invited_by, created_at=at,
                                               expires_at=at + invitation_max_age())
        write_audit(project_id=project.pk, action="member_invite", actor=actor,
                    after={"invitee": text, "role": role, "invitation": invitation.pk,
                           "expires_at": invitation.expires_at.isoformat()})
    return invitation


def invitation_token(invitation: Invitation) -> str:
    """The link's token: the invitation's id, signed and timestamped with SECRET_KEY."""
    return signing.dumps(invitation.pk, salt=INVITATION_SALT)


def invitation_open(token: str) -> Invitation:
    """The invitation a link names, if it can still be accepted; InvalidInput saying why not otherwise."""
    try:
        pk = signing.loads(token, salt=INVITATION_SALT, max_age=invitation_max_age())
    except signing.SignatureExpired:
        raise InvalidInput("This invitation has expired: ask the project's owner for a new one.") from None
    except signing.BadSignature:
        raise InvalidInput("This invitation link is not valid: check that it was copied whole.") from None
    invitation = Invitation.objects.select_related("project", "invited_by").filter(pk=pk).first()
    if invitation is None or invitation.revoked_at is not None:
        raise InvalidInput("This invitation was withdrawn: ask the project's owner for a new one.")
    if invitation.accepted_at is not None:
        raise InvalidInput("This invitation was already accepted.")
    if invitation.expires_at <= utcnow():
        raise InvalidInput("This invitation has expired: ask the project's owner for a new one.")
    return invitation


def _accept(invitation: Invitation, user: User) -> Membership:
    """Inside a transaction: lock the invitation, check it once more, and make the account a member."""
    Project.objects.select_for_update().filter(pk=invitation.project_id).first()
    locked = Invitation.objects.select_for_update().get(pk=invitation.pk)
    if locked.accepted_at is not None or locked.revoked_at is not None:
        raise InvalidInput("This invitation was already used or withdrawn.")
    if not locked.is_for(user):
        raise InvalidInput(f"This invitation was sent to {locked.invitee}: log in with that account to accept it.")
    inviter = invitation.invited_by.get_username() if invitation.invited_by else None
    membership = member_add(project=invitation.project, user=user, role=locked.role, actor=actor_for_user(user),
                            note={"invitation": locked.pk, "invited_by": inviter})
    Invitation.objects.filter(pk=locked.pk).update(accepted_at=utcnow(), accepted_by=user)
    return membership


def invitation_accept(*, token: str, user: User) -> Membership:
    """The logged-in account accepts the invitation: it becomes a member with the invited role (audited)."""
    with transaction.atomic():
        return _accept(invitation_open(token), user)


def account_create(*, username: str, email: str, password: str) -> User:
    """A new account with its password (validated by the form with Django's password validators)."""
    username, email = (username or "").strip(), (email or "").strip()
    Accounts = get_user_model()
    if not username:
        raise InvalidInput("give a username for the new account")
    if Accounts.objects.filter(username__iexact=username).exists():
        raise InvalidInput(f"the username {username!r} is taken: choose another")
    if email and Accounts.objects.filter(email__iexact=email).exists():
        raise InvalidInput("an account with this email address exists: log in with it to accept the invitation")
    return Accounts.objects.create_user(username=username, email=email, password=password)


def invitation_accept_new_account(*, token: str, username: str, password: str) -> tuple[User, Membership]:
    """A new account for the invited address, made a member: both or neither."""
    with transaction.atomic():
        invitation = invitation_open(token)
        if not invitation.is_email:
            raise InvalidInput("This invitation is for an existing account: log in to accept it.")
        user = account_create(username=username, email=invitation.invitee, password=password)
        return user, _accept(invitation, user)


def invitation_revoke(*, project: Project, invitation: Invitation, actor: str) -> None:
    """Withdraw a pending invitation: its link stops working."""
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        locked = Invitation.objects.select_for_update().get(pk=invitation.pk, project=project)
        if locked.accepted_at is not None or locked.revoked_at is not None:
            raise InvalidInput(f"the invitation to {locked.invitee} is no longer pending")
        Invitation.objects.filter(pk=locked.pk).update(revoked_at=utcnow())
        write_audit(project_id=project.pk, action="member_invite_revoke", actor=actor,
                    before={"invitee": locked.invitee, "role": locked.role, "invitation": locked.pk})


def _other_owners(project: Project, membership: Membership) -> bool:
    return Membership.objects.filter(project=project, role=Role.OWNER).exclude(pk=membership.pk).exists()


def member_set_role(*, project: Project, membership: Membership, role: Any, actor: str,
                    note: dict[str, Any] | None = None) -> Membership:
    role = _role(role)
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk, project=project)
        if locked.role == role:
            return locked
        if locked.role == Role.OWNER and not _other_owners(project, locked):
            raise InvalidInput(LAST_OWNER)
        before = locked.role
        Membership.objects.filter(pk=locked.pk).update(role=role)
        locked.refresh_from_db()
        write_audit(project_id=project.pk, action="member_role", actor=actor,
                    before={**_who(locked.user), "role": before},
                    after={**_who(locked.user), "role": role, **(note or {})})
    return locked


def member_remove(*, project: Project, membership: Membership, actor: str,
                  note: dict[str, Any] | None = None) -> None:
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk, project=project)
        if locked.role == Role.OWNER and not _other_owners(project, locked):
            raise InvalidInput(LAST_OWNER)
        write_audit(project_id=project.pk, action="member_remove", actor=actor,
                    before={**_who(locked.user), "role": locked.role}, after=note)
        locked.delete()


# --- roles from the identity provider (single sign-on) -------------------------------------------


@dataclass(frozen=True)
class RoleChange:
    project: str
    before: str | None
    after: str | None


def member_roles_sync(*, user: User, roles: dict[str, str], managed: Iterable[str], actor: str,
                      note: dict[str, Any] | None = None) -> tuple[list[RoleChange], list[str]]:
    """Make `user`'s memberships in the `managed` projects (by name) follow `roles` (project name -> role).

    A managed project that `roles` names gets the membership added or its role changed; one that
    `roles` leaves out loses it. Each change is one audit row (with `note`), through member_add,
    member_set_role and member_remove. Projects outside `managed` are not touched. Returns
    (the changes, the problems skipped): a project that does not exist, or the last owner who would
    lose the role (the project keeps its owner).
    """
    names = set(managed)
    for name, role in roles.items():
        _role(role)
        if name not in names:
            raise InvalidInput(f"project {name!r} is not among the managed projects")
    changes: list[RoleChange] = []
    problems: list[str] = []
    with transaction.atomic():
        projects = {project.name: project for project in Project.objects.filter(name__in=names,
                                                                                 deleting_since=None)}
        problems += [f"project {name!r} does not exist" for name in sorted(names - projects.keys())]
        for project in sorted(projects.values(), key=lambda project: project.pk):  # the lock order: by id
            wanted = roles.get(project.name)
            membership = Membership.objects.filter(project=project, user_id=user.pk).first()
            current = membership.role if membership else None
            if wanted == current:
                continue
            try:
                with transaction.atomic():
                    if membership is None:
                        member_add(project=project, user=user, role=wanted, actor=actor, note=note)
                    elif wanted is None:
                        member_remove(project=project, membership=membership, actor=actor, note=note)
                    else:
                        member_set_role(project=project, membership=membership, role=wanted, actor=actor, note=note)
            except InvalidInput as problem:
                problems.append(f"{project.name}: {problem}")
                continue
            changes.append(RoleChange(project.name, current, wanted))
    return changes, problems
