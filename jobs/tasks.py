"""The one Celery task: it runs any kind of job. All the work is in jobs.services."""

from __future__ import annotations

import uuid
from typing import Any

from celery import shared_task

from jobs.services import job_run


@shared_task(bind=True, name="jobs.run_job", acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> None:
    job_run(job_id=uuid.UUID(job_id), task_id=self.request.id or job_id)
