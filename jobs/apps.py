from __future__ import annotations

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules

# The module of an installed app that holds its job kinds, imported at start-up as Django
# imports `admin.py`: an app adds kinds without jobstream importing it by name.
KINDS_MODULE = "jobkinds"


class JobsConfig(AppConfig):
    name = "jobs"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: they need the models loaded, which they are once ready() runs.
        from jobs import builtin_kinds, owners  # noqa: F401  (registers kinds and signals)

        autodiscover_modules(KINDS_MODULE)
