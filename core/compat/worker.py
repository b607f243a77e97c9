"""The patches of a Celery worker, applied once at its start (a bootstep named in celery_app.py)."""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from core.compat import channels_redis, django, kombu
from core.compat.patch import Patch

PATCHES: tuple[Patch, ...] = (*kombu.PATCHES, *channels_redis.PATCHES, *django.PATCHES)


def install() -> None:
    """Applies each patch (raises IncompatibleUpstream for a safety patch out of range)."""
    for patch in PATCHES:
        patch.apply()


class UpstreamPatches(bootsteps.Step):
    """Applies the worker's patches before it consumes; IncompatibleUpstream stops the worker."""

    name = "jobstream upstream patches"

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        install()
