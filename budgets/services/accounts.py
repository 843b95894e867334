"""Console accounts: the embedded mode's first superuser."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db import transaction


def superuser_ensure(*, username: str, password: str) -> bool:
    """Create `username` as a superuser when the site has no superuser yet; True if it was created."""
    users = get_user_model()
    with transaction.atomic():
        if users.objects.filter(is_superuser=True).exists() or users.objects.filter(username=username).exists():
            return False
        users.objects.create_superuser(username, email="", password=password)
    return True
