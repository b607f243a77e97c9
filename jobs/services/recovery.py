"""Recovery: jobs whose worker was lost, jobs the broker never took, and task messages
the broker took and then lost. Celery beat runs these sweeps (jobs/tasks.py `sweep`).

Every UPDATE repeats the conditions it was chosen on, so a heartbeat, an end or a
restart landing meanwhile wins; changes of a running job jump OTHER_WRITER_SEQ_GAP past
its row (jobs/services/transitions.py).
"""

from __future__ import annotations

import logging
import operator
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any

import redis
from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from kombu.exceptions import OperationalError

from celery_app import app
from jobs.broker import BrokerNotSearchable, broker_queues_for, broker_task_ids_absent
from jobs.kinds import UnknownKind, kind_get
from jobs.models import Job, JobState
from jobs.services.fair_share import job_release_held_on_commit
from jobs.services.submit import job_dispatch
from jobs.services.transitions import OTHER_WRITER_SEQ_GAP, job_transition
from jobs.task_names import RUN_JOB_TASK

logger = logging.getLogger(__name__)

# job_create dispatches right after its commit and gives up within a second (its retry
# policy, jobs/services/submit.py); a queued job still undispatched after this long will
# not be sent by it.
REDISPATCH_AFTER = 5.0  # seconds
SWEEP_BATCH = 500  # jobs a sweep handles per pass: bounded work after a mass failure; the next sweep takes the rest


@dataclass(frozen=True)
class StaleSweep:
    requeued: int  # sent to run again
    failed: int  # lost JOB_MAX_ATTEMPTS times, or silent past its hard time limit
    cancelled: int  # lost after a cancel was asked for


# --- lost workers ----------------------------------------------------------------


def job_sweep_stale(*, now: datetime | None = None) -> StaleSweep:
    """Resolves running jobs whose worker stopped heartbeating JOB_STALE_AFTER ago.

    Each runs again (queued, then dispatched) while attempts remain, else ends
    `failed` with a clear error (`cancelled` if a cancel was asked for); a job silent
    past its kind's hard time limit was killed by it, and fails saying so. Every UPDATE
    repeats the conditions, so a heartbeat, an end or a restart landing meanwhile wins.
    """
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.JOB_STALE_AFTER)
    silent = Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, updated_at__lt=cutoff)
    stale = Job.objects.filter(silent, state=JobState.RUNNING).order_by("created_at")
    requeued = failed = cancelled = 0
    columns = ("pk", "kind", "attempts", "cancel_requested", "started_at")
    for job_id, kind, attempts, cancel_requested, started_at in stale.values_list(*columns)[:SWEEP_BATCH]:
        same_run = silent & Q(attempts=attempts)
        out_of_time = _hard_limit_error(kind, started_at=started_at, now=now)
        if cancel_requested or out_of_time or attempts >= settings.JOB_MAX_ATTEMPTS:
            ended = job_end_lost(
                job_id=job_id, attempts=attempts, cancelled=cancel_requested, where=same_run, error=out_of_time
            )
            if ended is not None and ended.state == JobState.CANCELLED:
                cancelled += 1
            elif ended is not None:
                failed += 1
            continue
        job = job_transition(
            job_id=job_id,
            from_states={JobState.RUNNING},
            where=same_run,
            seq_gap=OTHER_WRITER_SEQ_GAP,
            state=JobState.QUEUED,
            dispatched_at=None,
            started_at=None,
            heartbeat_at=None,
            celery_task_id="",
            requeues=F("requeues") + 1,
            held=False,
            updated_at=now,
            **progress_restarted(
                f"Its worker stopped responding; waiting to run again (attempt {attempts + 1} "
                f"of {settings.JOB_MAX_ATTEMPTS})"
            ),
        )
        if job is None:
            continue
        requeued += 1
        logger.warning(
            "job %s (kind %s): no heartbeat for %g s; its worker is lost, queued to run again (attempt %d of %d)",
            job_id,
            kind,
            settings.JOB_STALE_AFTER,
            attempts + 1,
            settings.JOB_MAX_ATTEMPTS,
        )
        transaction.on_commit(partial(job_dispatch, job_id=job_id))
    return StaleSweep(requeued=requeued, failed=failed, cancelled=cancelled)


def job_end_lost(
    *, job_id: uuid.UUID, attempts: int, cancelled: bool, where: Q, error: str | None = None
) -> Job | None:
    """running → failed (or cancelled, when asked for) after its last run was lost;
    `error` says why when it was not only lost once too often."""
    now = timezone.now()
    end: dict[str, Any] = {"state": JobState.CANCELLED}
    if not cancelled:
        detail = (
            f"Run {attempts} ended with no word from its worker (killed, out of memory, its host lost, or its hard "
            f"time limit); JOB_MAX_ATTEMPTS is {settings.JOB_MAX_ATTEMPTS}."
        )
        end = {"state": JobState.FAILED, "error": error or lost_worker_error(attempts), "error_detail": detail}
    job = job_transition(
        job_id=job_id,
        from_states={JobState.RUNNING},
        where=where,
        seq_gap=OTHER_WRITER_SEQ_GAP,
        finished_at=now,
        updated_at=now,
        **end,
    )
    if job is not None:
        logger.warning("job %s (kind %s): %s after %d lost run(s)", job.id, job.kind, job.state, attempts)
        job_release_held_on_commit(owner_user_id=job.owner_user_id, owner_token=job.owner_token)
    return job


def lost_worker_error(attempts: int) -> str:
    times = "once" if attempts == 1 else f"{attempts} times"
    return f"The worker running this job was lost {times}; giving up."


def _hard_limit_error(kind: str, *, started_at: datetime | None, now: datetime) -> str | None:
    """The error of a run silent past its kind's hard time limit: Celery killed it, and
    another run would be killed the same way."""
    try:
        time_limit = kind_get(kind).time_limit
    except UnknownKind:
        return None
    if started_at is None or (now - started_at).total_seconds() < time_limit:
        return None
    return f"The job ran longer than its hard limit of {time_limit} seconds and was stopped."


def progress_restarted(message: str) -> dict[str, Any]:
    """The bar back at 0 (its total kept, when known) with a message saying why: the
    fields of a job that runs again after its worker was lost."""
    return {
        "progress_current": 0,
        "progress_total": F("progress_total"),
        "progress_message": message[:500],
        "progress_rate": None,
        "progress_eta_seconds": None,
        "has_progress": True,
    }


# --- lost dispatches ---------------------------------------------------------------


def job_redispatch_undispatched(*, now: datetime | None = None) -> int:
    """Sends again the queued jobs the broker never took (it was away at submit, or
    the web process died between commit and dispatch); the number sent."""
    cutoff = (now or timezone.now()) - timedelta(seconds=REDISPATCH_AFTER)
    # Held jobs wait for their owner's line instead (jobs/services/fair_share.py).
    waiting = Job.objects.filter(state=JobState.QUEUED, dispatched_at__isnull=True, held=False, updated_at__lt=cutoff)
    sent = 0
    for job_id in waiting.order_by("created_at").values_list("pk", flat=True)[:SWEEP_BATCH]:
        if not job_dispatch(job_id=job_id):
            break  # the broker is still away: the next sweep tries again
        sent += 1
    if sent:
        logger.info("sent %d job(s) the broker had not taken", sent)
    return sent


def job_resend_lost(*, now: datetime | None = None) -> int:
    """Sends again the queued jobs whose task message the broker took and then lost (a
    Redis without persistence restarted before a worker took it); the number sent.

    Only jobs sent more than JOB_REQUEUE_AFTER seconds ago are looked for, at most
    SWEEP_BATCH of them (the longest waiting first), and the broker is searched only
    when there are some, reading at most jobs.broker.SCAN_LIMIT messages. A job is lost
    when the broker holds no message with its id, waiting or taken by a worker. Should
    one be sent twice all the same, the second message does nothing: `job_start`
    starts a job once, and never one that ended.
    """
    cutoff = (now or timezone.now()) - timedelta(seconds=settings.JOB_REQUEUE_AFTER)
    # A held job's message was taken and let go on purpose: it is no loss.
    waiting = Job.objects.filter(state=JobState.QUEUED, dispatched_at__lt=cutoff, held=False).order_by("dispatched_at")
    candidates: dict[str, tuple[uuid.UUID, str, datetime]] = {
        str(job_id): (job_id, kind, dispatched_at)
        for job_id, kind, dispatched_at in waiting.values_list("pk", "kind", "dispatched_at")[:SWEEP_BATCH]
        if dispatched_at is not None  # always: for the type checker
    }
    if not candidates:
        return 0
    try:
        with app.connection_for_read() as broker:
            broker.ensure_connection(max_retries=1)
            queues = broker_queues_for(app=app, task_name=RUN_JOB_TASK)
            absent = broker_task_ids_absent(connection=broker, queues=queues, task_ids=candidates)
    except BrokerNotSearchable as exc:
        logger.warning(
            "%d job(s) queued over %g s; not looked for in the broker: %s",
            len(candidates),
            settings.JOB_REQUEUE_AFTER,
            exc,
        )
        return 0
    except (OperationalError, redis.RedisError, OSError) as exc:
        logger.warning("lost task messages not looked for: the broker did not answer (%r)", exc)
        return 0
    sent = 0
    for job_id, kind, dispatched_at in sorted((candidates[key] for key in absent), key=operator.itemgetter(2)):
        resent_at = timezone.now()
        # Claimed first, on the row as read: a job started, cancelled or sent by another
        # sweep since is left alone.
        claim = Job.objects.filter(pk=job_id, state=JobState.QUEUED, dispatched_at=dispatched_at)
        if not claim.update(dispatched_at=resent_at):
            continue
        if not job_dispatch(job_id=job_id):
            # Back to never sent: `job_redispatch_undispatched` sends it once the broker is back.
            Job.objects.filter(pk=job_id, state=JobState.QUEUED, dispatched_at=resent_at).update(dispatched_at=None)
            break
        sent += 1
        logger.warning(
            "job %s (kind %s): the broker lost its task message (sent %.0f s ago, in no queue, taken by no worker); "
            "sent again",
            job_id,
            kind,
            (resent_at - dispatched_at).total_seconds(),
        )
    return sent
