"""Writes to jobs, one module per concern; the names callers use are re-exported here.

- transitions: the one state transition (fenced compare-and-set, published on commit)
  and the seq rules
- submit: create, submit within quotas, dispatch to the broker
- run: start, progress (the worker's write-behind), heartbeat, finish, the whole run
- cancel: cancel, revoke
- retry: run an ended job again (same kind, parameters and files, same owner)
- recovery: lost workers, jobs never sent, messages the broker lost
- notify: the email of a job's end, sent once
- fair_share: at most JOB_QUOTA_RUNNING running jobs per owner; the others held, queued
- retention: purge of old finished jobs and their files

Reads live in jobs/selectors.py; the Celery tasks (jobs/tasks.py) call these, never the
other way round.
"""

from __future__ import annotations

from jobs.services.cancel import job_cancel, task_revoke
from jobs.services.fair_share import job_admit, job_dispatch_held, job_release_held
from jobs.services.notify import job_notify_ended, job_notify_on_commit
from jobs.services.recovery import (
    REDISPATCH_AFTER,
    SWEEP_BATCH,
    StaleSweep,
    job_end_lost,
    job_redispatch_undispatched,
    job_resend_lost,
    job_sweep_stale,
    lost_worker_error,
)
from jobs.services.retention import PurgeReport, RetentionAges, job_purge_finished, retention_ages
from jobs.services.retry import RetryUploadMissing, job_retry
from jobs.services.run import (
    INTERNAL_ERROR_MESSAGE,
    RunningJob,
    heartbeat,
    job_finish,
    job_heartbeat,
    job_report_progress,
    job_run,
    job_start,
)
from jobs.services.submit import DISPATCH_RETRY_POLICY, job_create, job_dispatch, job_submit
from jobs.services.transitions import OTHER_WRITER_SEQ_GAP, SEQ_WINDOW, job_publish, job_transition

__all__ = [
    "DISPATCH_RETRY_POLICY",
    "INTERNAL_ERROR_MESSAGE",
    "OTHER_WRITER_SEQ_GAP",
    "REDISPATCH_AFTER",
    "SEQ_WINDOW",
    "SWEEP_BATCH",
    "PurgeReport",
    "RetentionAges",
    "RetryUploadMissing",
    "RunningJob",
    "StaleSweep",
    "heartbeat",
    "job_admit",
    "job_cancel",
    "job_create",
    "job_dispatch",
    "job_dispatch_held",
    "job_end_lost",
    "job_finish",
    "job_heartbeat",
    "job_notify_ended",
    "job_notify_on_commit",
    "job_publish",
    "job_purge_finished",
    "job_redispatch_undispatched",
    "job_release_held",
    "job_report_progress",
    "job_resend_lost",
    "job_retry",
    "job_run",
    "job_start",
    "job_submit",
    "job_sweep_stale",
    "job_transition",
    "lost_worker_error",
    "retention_ages",
    "task_revoke",
]
