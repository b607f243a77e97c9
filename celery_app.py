"""The Celery application: configuration comes from Django settings (namespace CELERY)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "core.settings")

from jobs.broker_fixes import install as install_broker_fixes

install_broker_fixes()  # a worker survives a Redis restart with tasks running (jobs/broker_fixes.py)

app = Celery("jobstream")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
