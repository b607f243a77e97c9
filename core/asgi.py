"""ASGI entry point: HTTP goes to Django, WebSockets to the job consumers.

Sockets pass the exact origin check (core/websocket_origin.py: a handshake whose Origin
is not the served origin or a CSRF_TRUSTED_ORIGINS one, in scheme, host and port, or
that has none, gets 403) and the session middleware; the consumer finds the owner (user or
anonymous token) from the session in its one database trip per handshake, so
Channels' AuthMiddleware, a trip of its own, is left out. The web process's patches of
Twisted, autobahn, daphne and Channels are applied before anything is served
(core/compat/web.py): a safety patch whose upstream is out of its range stops start-up here.
Request bodies are held to jobs/body_limits.py before daphne reads them.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
django_asgi_app = get_asgi_application()  # before importing consumers: it sets Django up

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from core.compat import daphne as compat_daphne  # noqa: E402
from core.compat import web as compat_web  # noqa: E402
from core.gc_tuning import tune_after_startup  # noqa: E402
from core.websocket_origin import ExactOriginValidator  # noqa: E402
from jobs.body_limits import request_body_limit  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402

compat_web.install()
compat_daphne.limit_request_bodies(request_body_limit)  # bodies checked from the head (jobs/body_limits.py)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ExactOriginValidator(SessionMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

tune_after_startup()  # the start-up heap frozen, fewer collector pauses (core/gc_tuning.py)
