"""Who owns a job: a signed-in user, or an anonymous visitor through their session."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from django.contrib.auth import get_user
from django.contrib.auth.signals import user_logged_in
from django.db.models import Q
from django.dispatch import receiver
from django.http import HttpRequest

from jobs.models import Job

SESSION_OWNER_KEY = "jobstream_owner"  # the anonymous owner's token, kept in the session


@dataclass(frozen=True)
class Owner:
    user_id: int | None = None
    token: str | None = None
    is_staff: bool = False

    @property
    def key(self) -> str:
        return f"u.{self.user_id}" if self.user_id else f"s.{self.token}"

    def jobs_filter(self) -> Q:
        if self.user_id:
            return Q(owner_user_id=self.user_id)
        return Q(owner_token=self.token, owner_user__isnull=True)

    def owns(self, owner_user_id: int | None, owner_token: str) -> bool:
        if self.user_id:
            return owner_user_id == self.user_id
        return owner_user_id is None and bool(self.token) and owner_token == self.token


def owner_from_request(request: HttpRequest) -> Owner:
    """The request's owner; gives an anonymous visitor a session token on first sight."""
    user = request.user
    if user.is_authenticated:
        return Owner(user_id=user.pk, is_staff=user.is_staff)
    token = request.session.get(SESSION_OWNER_KEY)
    if not token:
        token = secrets.token_hex(16)
        request.session[SESSION_OWNER_KEY] = token
    return Owner(token=token)


def owner_from_scope(scope: dict[str, Any]) -> Owner | None:
    """A socket's owner (sync: reading the session may query the database).

    None for a visitor with no session token: they own no job yet. The user comes from
    `scope["user"]` when an auth middleware set it, else from the session here, in the
    same trip to the database as the rest of the handshake.
    """
    user = scope["user"] if "user" in scope else _user_from_session(scope.get("session"))
    if user is not None and user.is_authenticated:
        return Owner(user_id=user.pk, is_staff=user.is_staff)
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
