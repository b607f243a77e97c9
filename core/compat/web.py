"""The patches of a web process (daphne serving core.asgi), applied once at start-up."""

from __future__ import annotations

from core.compat import autobahn, channels, channels_redis, daphne, django, twisted
from core.compat.patch import Patch

PATCHES: tuple[Patch, ...] = (
    *twisted.PATCHES,
    *daphne.PATCHES,
    *autobahn.PATCHES,
    *channels.PATCHES,
    *channels_redis.PATCHES,
    *django.PATCHES,
)


def install() -> None:
    """Applies each patch (raises IncompatibleUpstream for a safety patch out of range)."""
    for patch in PATCHES:
        patch.apply()
