"""The Celery application: configuration comes from Django settings (namespace CELERY)."""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

from jobs.broker_fixes import install as install_broker_fixes

install_broker_fixes()  # a worker survives a Redis restart with tasks running (jobs/broker_fixes.py)

app = Celery("jobstream")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@worker_ready.connect
@worker_process_init.connect
def _tune_gc(**_: object) -> None:
    """The worker (and each prefork child) freezes its start-up heap once ready (core/gc_tuning.py)."""
    from core.gc_tuning import tune_after_startup

    tune_after_startup()
