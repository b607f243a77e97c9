"""ASGI entry point: HTTP goes to Django, WebSockets to the job consumers.

Sockets pass Channels' AllowedHostsOriginValidator (a handshake with a foreign or no
Origin gets 403) and the session middleware; the consumer finds the owner (user or
anonymous token) from the session in its one database trip per handshake, so
Channels' AuthMiddleware, a trip of its own, is left out.
Daphne's TCP writes go straight to the socket when nothing is buffered
(notifications/transport.py).
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")
django_asgi_app = get_asgi_application()  # before importing consumers: it sets Django up

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.sessions import SessionMiddlewareStack  # noqa: E402

from core.gc_tuning import tune_after_startup  # noqa: E402
from notifications import close_codes, transport  # noqa: E402
from notifications.routing import websocket_urlpatterns  # noqa: E402

transport.install()  # frames go to the kernel on write (notifications/transport.py)
close_codes.install()  # a frame over 4 KiB can close with 1009 (notifications/close_codes.py)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(SessionMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)

tune_after_startup()  # the start-up heap frozen, fewer collector pauses (core/gc_tuning.py)
