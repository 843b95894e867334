"""Project members: add (an existing account or a new one), change a role, remove.

A project always keeps an owner: the last one can be neither removed nor demoted. The
project row is locked first (the lock order everywhere), so two owners demoting each other
at once cannot leave the project without one.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User  # AUTH_USER_MODEL
from django.db import transaction

from ..errors import InvalidInput
from ..models import Membership, Project, Role
from .audit import write_audit

LAST_OWNER = "a project keeps at least one owner: make someone else an owner first"


def _role(role: Any) -> str:
    if role not in Role.values:
        raise InvalidInput(f"role must be one of: {', '.join(Role.values)} (got {role!r})")
    return str(role)


def _who(user: User) -> dict[str, Any]:
    return {"user": user.get_username(), "user_pk": user.pk}


def member_add(*, project: Project, user: User, role: Any, actor: str) -> Membership:
    role = _role(role)
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        if Membership.objects.filter(project=project, user_id=user.pk).exists():
            raise InvalidInput(f"{user.get_username()} is already a member of this project")
        membership = Membership.objects.create(project=project, user=user, role=role)
        write_audit(project_id=project.pk, action="member_add", actor=actor, after={**_who(user), "role": role})
    return membership


def account_create(*, username: str, email: str, actor: str) -> User:
    """A new account without a usable password: its owner sets one through a one-time link."""
    username, email = (username or "").strip(), (email or "").strip()
    Accounts = get_user_model()
    if not username:
        raise InvalidInput("give a username for the new account")
    if Accounts.objects.filter(username__iexact=username).exists():
        raise InvalidInput(f"the username {username!r} is taken: add that account instead")
    if email and Accounts.objects.filter(email__iexact=email).exists():
        raise InvalidInput(f"an account with the email {email!r} exists: add that account instead")
    user = Accounts.objects.create_user(username=username, email=email)  # no password: unusable until set
    return user


def member_create_account(*, project: Project, username: str, email: str, role: Any, actor: str
                          ) -> tuple[User, Membership]:
    """Create an account and make it a member, together (nothing is left half-done)."""
    role = _role(role)
    with transaction.atomic():
        user = account_create(username=username, email=email, actor=actor)
        membership = member_add(project=project, user=user, role=role, actor=actor)
    return user, membership


def _other_owners(project: Project, membership: Membership) -> bool:
    return Membership.objects.filter(project=project, role=Role.OWNER).exclude(pk=membership.pk).exists()


def member_set_role(*, project: Project, membership: Membership, role: Any, actor: str) -> Membership:
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
                    before={**_who(locked.user), "role": before}, after={**_who(locked.user), "role": role})
    return locked


def member_remove(*, project: Project, membership: Membership, actor: str) -> None:
    with transaction.atomic():
        Project.objects.select_for_update().filter(pk=project.pk).first()
        locked = Membership.objects.select_for_update().select_related("user").get(pk=membership.pk, project=project)
        if locked.role == Role.OWNER and not _other_owners(project, locked):
            raise InvalidInput(LAST_OWNER)
        write_audit(project_id=project.pk, action="member_remove", actor=actor,
                    before={**_who(locked.user), "role": locked.role})
        locked.delete()
