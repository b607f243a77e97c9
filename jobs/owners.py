"""Who owns a job: a signed-in user, or an anonymous visitor through their session.

And what an owner may do beyond their own jobs, from two permissions (jobs.Job's
Meta.permissions; superusers have every permission, the `is_staff` flag alone grants
nothing here): `jobs.view_all_jobs` (every job, tracebacks, others' result files, the
live view) and `jobs.bypass_quotas`. `can_view_all` and `can_bypass_quotas` are the one
place that reads them; reading them may query the database (sync code only), and
Django's ModelBackend caches them on the user object.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from django.contrib.auth import get_user, get_user_model
from django.contrib.auth.signals import user_logged_in
from django.db.models import Q
from django.dispatch import receiver
from django.http import HttpRequest

from jobs.models import Job

SESSION_OWNER_KEY = "jobstream_owner"  # the anonymous owner's token, kept in the session
VIEW_ALL_JOBS = "jobs.view_all_jobs"
BYPASS_QUOTAS = "jobs.bypass_quotas"


def can_view_all(user: Any) -> bool:
    """Whether `user` may see every job (its traceback and file too) and the live view."""
    return bool(user is not None and user.is_authenticated and user.has_perm(VIEW_ALL_JOBS))


def can_bypass_quotas(user: Any) -> bool:
    """Whether `user` may start jobs and open streams past the quotas."""
    return bool(user is not None and user.is_authenticated and user.has_perm(BYPASS_QUOTAS))


def views_all_now(user_id: int | None) -> bool:
    """`can_view_all` read afresh from the database (a new user object, so no cached
    permissions): for a stream that re-checks a right it was opened with."""
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    return can_view_all(user)


@dataclass(frozen=True)
class Owner:
    """An owner, with the rights read once where it was made (a request, a handshake)."""

    user_id: int | None = None
    token: str | None = None
    views_all: bool = False
    bypasses_quotas: bool = False

    @property
    def key(self) -> str:
        return f"u.{self.user_id}" if self.user_id else f"s.{self.token}"

    def jobs_filter(self) -> Q:
        if self.user_id:
            return Q(owner_user_id=self.user_id)
        if not self.token:
            return Q(pk__in=[])  # a visitor without a session owns nothing
        return Q(owner_token=self.token, owner_user__isnull=True)

    def owns(self, owner_user_id: int | None, owner_token: str) -> bool:
        if self.user_id:
            return owner_user_id == self.user_id
        return owner_user_id is None and bool(self.token) and owner_token == self.token


def owner_of_user(user: Any) -> Owner:
    """A signed-in user as an owner, with their rights."""
    return Owner(user_id=user.pk, views_all=can_view_all(user), bypasses_quotas=can_bypass_quotas(user))


def owner_from_request(request: HttpRequest, *, create: bool = False) -> Owner:
    """The request's owner. An anonymous visitor without a session token gets one (and
    so a session) only with `create`: for `GET /` and a request that creates a job
    (docs/contract.md); any other request leaves them an owner of nothing, with no
    session row written."""
    user = request.user
    if user.is_authenticated:
        return owner_of_user(user)
    token = request.session.get(SESSION_OWNER_KEY)
    if not token and create:
        token = secrets.token_hex(16)
        request.session[SESSION_OWNER_KEY] = token
    return Owner(token=token or None)


def owner_from_scope(scope: dict[str, Any]) -> Owner | None:
    """A socket's owner (sync: reading the session may query the database).

    None for a visitor with no session token: they own no job yet. The user comes from
    `scope["user"]` when an auth middleware set it, else from the session here, in the
    same trip to the database as the rest of the handshake.
    """
    user = scope["user"] if "user" in scope else _user_from_session(scope.get("session"))
    if user is not None and user.is_authenticated:
        return owner_of_user(user)
    session = scope.get("session")
    token = session.get(SESSION_OWNER_KEY) if session is not None else None
    return Owner(token=token) if token else None


def _user_from_session(session: Any) -> Any:
    if session is None:
        return None
    return get_user(SimpleNamespace(session=session))  # type: ignore[arg-type]


@receiver(user_logged_in)
def adopt_anonymous_jobs(sender: object, request: HttpRequest | None, user: Any, **kwargs: Any) -> None:
    """Jobs started before signing in follow the visitor into their account."""
    if request is None or not hasattr(request, "session"):
        return
    token = request.session.get(SESSION_OWNER_KEY)
    if token:
        Job.objects.filter(owner_token=token, owner_user__isnull=True).update(owner_user=user)
