"""The Celery tasks: run a job, mail its end, sweep for lost ones, purge old ones, clear expired sessions.
All the jobs' work is in jobs.services."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import shared_task
from django.core.management import call_command

from jobs.services import (
    job_dispatch_held,
    job_notify_ended,
    job_purge_finished,
    job_redispatch_undispatched,
    job_resend_lost,
    job_run,
    job_sweep_stale,
    retention_ages,
)
from jobs.task_names import CLEAR_SESSIONS_TASK, NOTIFY_ENDED_TASK, PURGE_FINISHED_TASK, RUN_JOB_TASK, SWEEP_TASK

logger = logging.getLogger(__name__)


@shared_task(bind=True, name=RUN_JOB_TASK, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self: Any, job_id: str, requeues: int | None = None) -> None:
    # The broker flags a message it hands out again because the worker that took it
    # died before acknowledging it (reject_on_worker_lost, or the visibility timeout).
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    job_run(job_id=uuid.UUID(job_id), task_id=self.request.id or job_id, redelivered=redelivered, requeues=requeues)


@shared_task(name=NOTIFY_ENDED_TASK, ignore_result=True)
def notify_ended(job_id: str) -> bool:
    """Emails a job's owner how it ended, unless someone did already (sent on its end's commit)."""
    return job_notify_ended(job_id=uuid.UUID(job_id))


@shared_task(name=SWEEP_TASK, ignore_result=True)
def sweep() -> dict[str, int]:
    """Run by Celery beat every JOB_SWEEP_INTERVAL s: jobs whose worker was lost, jobs
    never sent, jobs whose message the broker lost, held jobs whose owner has a free place."""
    stale = job_sweep_stale()
    sent = job_redispatch_undispatched()
    resent = job_resend_lost()
    released = job_dispatch_held()
    return {
        "requeued": stale.requeued,
        "failed": stale.failed,
        "cancelled": stale.cancelled,
        "redispatched": sent,
        "resent": resent,
        "released": released,
    }


@shared_task(name=PURGE_FINISHED_TASK, ignore_result=True)
def purge_finished() -> dict[str, int]:
    """Retention: deletes jobs that ended over JOB_RETENTION_DAYS ago (anonymous owners':
    JOB_RETENTION_DAYS_ANONYMOUS), with their files (0 keeps them)."""
    ages = retention_ages()
    if ages.signed_in is None and ages.anonymous is None:
        logger.info("purge: JOB_RETENTION_DAYS and JOB_RETENTION_DAYS_ANONYMOUS are 0, finished jobs are kept")
        return {"jobs": 0, "directories": 0}
    report = job_purge_finished(older_than=ages.signed_in, anonymous_older_than=ages.anonymous)
    return {"jobs": report.jobs, "directories": report.directories}


@shared_task(name=CLEAR_SESSIONS_TASK, ignore_result=True)
def clear_sessions() -> None:
    """Run by Celery beat once a day: deletes expired sessions, as `manage.py clearsessions`
    does (Django leaves them in the table otherwise)."""
    call_command("clearsessions")
