"""The Celery application: configuration comes from Django settings (namespace CELERY).

Every process that sends tasks imports it (jobs/services), so `@shared_task` and
`send_task` use this app and its broker everywhere.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init, worker_ready

from core.compat.worker import UpstreamPatches
from core.gc_tuning import tune_after_startup
from core.worker_metrics import WorkerMetricsServer

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

app = Celery("jobstream")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.steps["worker"].add(UpstreamPatches)  # the worker's patches of kombu and channels-redis, before it consumes
app.steps["worker"].add(WorkerMetricsServer)  # WORKER_METRICS_PORT (core/worker_metrics.py)
app.autodiscover_tasks()


@worker_ready.connect
@worker_process_init.connect
def _tune_gc(**_: object) -> None:
    """The worker (and each prefork child) freezes its start-up heap once ready (core/gc_tuning.py)."""
    tune_after_startup()
