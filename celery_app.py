"""The Celery application: configuration comes from Django settings (namespace CELERY)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("jobstream")
app.config_from_object("django.conf:settings", namespace="CELERY")
# The worker's patches of kombu and channels-redis, applied before it consumes; a safety
# patch whose upstream is out of its range stops the worker (core/compat/worker.py). Named,
# not imported: the `core` package imports this module, and core.compat is in it.
app.steps["worker"].add("core.compat.worker:UpstreamPatches")
app.autodiscover_tasks()


@worker_ready.connect
@worker_process_init.connect
def _tune_gc(**_: object) -> None:
    """The worker (and each prefork child) freezes its start-up heap once ready (core/gc_tuning.py)."""
    from core.gc_tuning import tune_after_startup  # TEMPORARY: core/__init__.py imports this module

    tune_after_startup()
