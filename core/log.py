"""Logs that say which job they are about: every line logged while a worker runs a job
carries the job's id and kind, whichever module logs it (jobs.services, the kind's own
code, Celery's trace).

- `job_log_context(job_id=..., kind=...)` sets them for the current thread or task
  (a context variable). The Celery task `jobs.run_job` runs inside it: the receivers
  of Celery's `task_prerun`/`task_postrun` signals below set and reset it, so neither
  the task nor the services need to pass anything along.
- `JobContextFilter`, on the handlers of settings.LOGGING, puts `job_id` and
  `job_kind` on each record (`-` outside a job), from `extra={...}` when the call
  gives them, else from the context; and `job_context`, ` [job=<id> kind=<kind>]` or
  nothing, for the plain format.
- `JsonFormatter` writes one JSON object per line (LOG_FORMAT=json), for log
  collectors that index fields.

This module is imported wherever settings.LOGGING is configured (it names the filter),
so every Django process, web and worker, gets the signal receivers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from celery.signals import task_postrun, task_prerun

from jobs.task_names import RUN_JOB_TASK  # the task whose id is the job's id

NO_JOB = "-"  # job_id and job_kind on a line about no job


@dataclass(frozen=True)
class JobLogContext:
    job_id: str
    kind: str


_current: ContextVar[JobLogContext | None] = ContextVar("jobstream_job_log_context", default=None)


def current_job_log_context() -> JobLogContext | None:
    return _current.get()


@contextmanager
def job_log_context(*, job_id: object, kind: str | None) -> Iterator[JobLogContext]:
    """Lines logged inside carry this job's id and kind."""
    context = JobLogContext(job_id=str(job_id), kind=kind or NO_JOB)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


class JobContextFilter(logging.Filter):
    """Adds `job_id`, `job_kind` and `job_context` to every record; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = _current.get()
        job_id = getattr(record, "job_id", None) or (context.job_id if context else NO_JOB)
        kind = getattr(record, "job_kind", None) or (context.kind if context else NO_JOB)
        record.job_id, record.job_kind = job_id, kind
        record.job_context = f" [job={job_id} kind={kind}]" if job_id != NO_JOB else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, job_id, job_kind (and
    the traceback, when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "job_id": getattr(record, "job_id", NO_JOB),
            "job_kind": getattr(record, "job_kind", NO_JOB),
        }
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


# --- the job a Celery task runs ---------------------------------------------------

# The token that restores the context a task found, for its postrun.
_task_token: ContextVar[Token[JobLogContext | None] | None] = ContextVar("jobstream_task_log_token", default=None)


def _job_kind(job_id: str) -> str | None:
    from jobs.models import Job  # here: settings.LOGGING loads this module before any app's models can be

    try:
        return Job.objects.filter(pk=job_id).values_list("kind", flat=True).first()
    except Exception:  # a log label must never stop a job: job_run meets the real problem
        return None


@task_prerun.connect(weak=False, dispatch_uid="jobstream.log.enter_job")
def _enter_job(sender: Any = None, task_id: str | None = None, **kwargs: Any) -> None:
    if getattr(sender, "name", None) != RUN_JOB_TASK or not task_id:
        return
    context = JobLogContext(job_id=task_id, kind=_job_kind(task_id) or NO_JOB)
    _task_token.set(_current.set(context))


@task_postrun.connect(weak=False, dispatch_uid="jobstream.log.leave_job")
def _leave_job(**kwargs: Any) -> None:
    token = _task_token.get()
    if token is None:
        return
    _task_token.set(None)
    try:
        _current.reset(token)
    except ValueError:  # set in another context (a pool that moves tasks between them)
        _current.set(None)
