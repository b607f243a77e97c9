"""Test accounts with the rights DESIGN.md names (jobs.Job's Meta.permissions).

`is_staff` alone grants nothing beyond one's own jobs: a test that expects the powers
of "staff" grants the permission it relies on.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission

VIEW_ALL_JOBS = "view_all_jobs"  # every job, tracebacks, others' files, the live view
BYPASS_QUOTAS = "bypass_quotas"  # starts jobs and opens streams past the quotas
PASSWORD = "pw-for-tests-only"


def user_with(username: str, *codenames: str, is_staff: bool = False, password: str = PASSWORD) -> Any:
    """A new user holding the jobs app's permissions `codenames` (sync: it writes rows)."""
    user = get_user_model().objects.create_user(username, password=password, is_staff=is_staff)
    grant(user, *codenames)
    return user


def grant(user: Any, *codenames: str) -> None:
    """Gives `user` the jobs app's permissions `codenames`, each of which must exist."""
    permissions = list(Permission.objects.filter(content_type__app_label="jobs", codename__in=codenames))
    assert sorted(p.codename for p in permissions) == sorted(set(codenames)), codenames
    user.user_permissions.add(*permissions)
    for cache in ("_perm_cache", "_user_perm_cache", "_group_perm_cache"):
        user.__dict__.pop(cache, None)  # Django caches a user's permissions on the object
