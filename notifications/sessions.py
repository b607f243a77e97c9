"""Streams end with the session: signing out ends every stream opened with it.

Each socket and event stream opened with a session joins that session's group
(notifications/groups.py, named by a hash of the key); `POST /accounts/logout/` sends
Django's `user_logged_out` just before it flushes the session, and the receiver here
publishes the session's end to the group. A socket then closes 4401, an event stream
ends (docs/contract.md#close-codes).
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_out
from django.dispatch import receiver
from django.http import HttpRequest

from notifications.groups import session_group
from notifications.publish import publish_session_end


def session_group_of(session: Any) -> str | None:
    """The group of a stream opened with `session` (a request's or a socket scope's);
    None without one (a cookieless client has no session to sign out of)."""
    key = getattr(session, "session_key", None) if session is not None else None
    return session_group(key) if key else None


@receiver(user_logged_out)
def end_the_sessions_streams(sender: object, request: HttpRequest | None, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    key = getattr(session, "session_key", None)
    if key:
        publish_session_end(key)
