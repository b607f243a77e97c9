from __future__ import annotations

from django.apps import AppConfig


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: they need the models loaded, which they are once ready() runs.
        from jobs import builtin_kinds, owners  # noqa: F401  (registers kinds and signals)
