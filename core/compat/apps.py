from __future__ import annotations

from django.apps import AppConfig


class CompatConfig(AppConfig):
    """Registers the version check of the patched upstreams (core/compat/checks.py)."""

    name = "core.compat"
    label = "compat"

    def ready(self) -> None:
        from core.compat import checks  # noqa: F401  (registers the system check; imports every upstream)
