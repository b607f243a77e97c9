"""Fair share: no owner runs more than JOB_QUOTA_RUNNING jobs at once.

The worker decides as it starts a job (`job_start`), in the transaction of the
queued → running compare-and-set, with the owner's line fenced (a transaction-scoped
advisory lock per owner on PostgreSQL; SQLite serialises writers already): a job starts
only while its owner's running jobs plus its owner's queued jobs submitted before it
stay under the limit. Otherwise it is held: it stays queued, out of the broker
(`Job.held`), and the worker slot is free again at once. An owner's line moves when one
of its jobs ends or a queued one is cancelled: then the owner's held jobs that now fit
are dispatched, oldest first, once that change commits. The sweeper does the same for
every owner with held jobs (`job_dispatch_held`), so a worker lost between the end of
one job and the dispatch of the next loses nothing.

The only way into `running` is `job_start`'s compare-and-set under the owner's lock
(a run restarted after a lost worker was running already), so the count it reads
cannot grow behind it.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from functools import partial

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, Q

from jobs.models import Job, JobState
from jobs.owners import Owner
from jobs.services.submit import job_dispatch

logger = logging.getLogger(__name__)

SWEEP_OWNERS = 500  # owners a sweep looks at: bounded work; the next sweep takes the rest


def job_owner(*, owner_user_id: int | None, owner_token: str) -> Owner:
    """The owner of a job row, as jobs/owners.py counts it."""
    return Owner(user_id=owner_user_id) if owner_user_id else Owner(token=owner_token)


def running_limit() -> int | None:
    """JOB_QUOTA_RUNNING, or None when it is 0 (off)."""
    return settings.JOB_QUOTA_RUNNING or None


def job_admit(*, job_id: uuid.UUID, owner: Owner) -> bool:
    """True when the queued job may start now under its owner's limit; else holds it.

    Call it inside the transaction that then moves the job to running (`job_start`):
    the owner's lock is held until that commits. A held job leaves the broker for good:
    the owner's line moving dispatches it again (`job_release_held`).
    """
    limit = running_limit()
    if limit is None:
        return True
    _lock_owner(owner)
    row = Job.objects.filter(pk=job_id).values_list("created_at", flat=True).first()
    if row is None:
        return True  # gone: the compare-and-set that follows finds nothing
    # One statement, so one snapshot: a job ahead that starts meanwhile is counted once.
    line = Job.objects.filter(owner.jobs_filter()).aggregate(
        running=Count("pk", filter=Q(state=JobState.RUNNING)),
        ahead=Count("pk", filter=Q(state=JobState.QUEUED) & _submitted_before(row, job_id)),
    )
    running, ahead = line["running"], line["ahead"]
    if running + ahead < limit:
        return True
    Job.objects.filter(pk=job_id, state=JobState.QUEUED).update(held=True)
    logger.info(
        "job %s held: its owner runs %d job(s) with %d queued ahead, JOB_QUOTA_RUNNING is %d",
        job_id,
        running,
        ahead,
        limit,
    )
    # Jobs ahead of it that were held before a place freed are sent now.
    _release(owner, limit=limit, running=running)
    return False


def job_release_held(*, owner: Owner) -> int:
    """Dispatches the owner's held jobs that fit under its limit now, oldest first, once
    this commits; the number sent. Called when one of its jobs ends or is cancelled."""
    with transaction.atomic():
        limit = running_limit()
        if limit is not None:
            _lock_owner(owner)
        running = Job.objects.filter(owner.jobs_filter(), state=JobState.RUNNING).count()
        return _release(owner, limit=limit, running=running)


def job_release_held_on_commit(*, owner_user_id: int | None, owner_token: str) -> None:
    """`job_release_held` for a job's owner once the current transaction commits. A
    database error is logged, not raised: the end it follows is committed, and the
    sweeper sends what this could not."""
    owner = job_owner(owner_user_id=owner_user_id, owner_token=owner_token)

    def release() -> None:
        try:
            job_release_held(owner=owner)
        except DatabaseError:
            logger.warning(
                "held jobs of owner %s not sent (database error); the sweeper sends them", owner.key, exc_info=True
            )

    transaction.on_commit(release)


def job_dispatch_held() -> int:
    """The sweep: every owner with held jobs gets those that fit dispatched (an end whose
    worker died before it could dispatch the next job, a limit raised); the number sent."""
    owners = (
        Job.objects.filter(state=JobState.QUEUED, held=True)
        .order_by()
        .values_list("owner_user_id", "owner_token")
        .distinct()[:SWEEP_OWNERS]
    )
    sent = 0
    for owner_user_id, owner_token in owners:
        sent += job_release_held(owner=job_owner(owner_user_id=owner_user_id, owner_token=owner_token))
    if sent:
        logger.info("sent %d held job(s) whose owner had a free place", sent)
    return sent


def _release(owner: Owner, *, limit: int | None, running: int) -> int:
    """Claims the held jobs among the owner's first free places in line and dispatches
    them on commit. In the caller's transaction, under the owner's lock."""
    queued = Job.objects.filter(owner.jobs_filter(), state=JobState.QUEUED).order_by("created_at", "pk")
    if limit is not None:
        free = limit - running
        if free <= 0:
            return 0
        queued = queued[:free]
    first = list(queued.values_list("pk", "held"))
    held = [job_id for job_id, is_held in first if is_held]
    if not held:
        return 0
    # The claim repeats the condition, so a cancel landing meanwhile wins; a job whose
    # dispatch then fails stays queued and undispatched, for the sweeper to send.
    Job.objects.filter(pk__in=held, state=JobState.QUEUED, held=True).update(held=False, dispatched_at=None)
    for job_id in held:
        transaction.on_commit(partial(job_dispatch, job_id=job_id))
    return len(held)


def _submitted_before(created_at: object, job_id: uuid.UUID) -> Q:
    """Jobs ahead in line: submitted earlier, the id breaking a tie."""
    return Q(created_at__lt=created_at) | Q(created_at=created_at, pk__lt=job_id)


def _lock_owner(owner: Owner) -> None:
    """Makes the starts and releases of one owner's jobs wait for each other until commit.

    PostgreSQL only: under READ COMMITTED two starts would both count the same free
    place. SQLite already serialises writers (BEGIN IMMEDIATE, core/settings.py).
    """
    if connection.vendor != "postgresql":
        return
    assert connection.in_atomic_block, "the fair-share lock lasts until commit: call it inside a transaction"
    digest = hashlib.blake2b(f"jobstream.running.{owner.key}".encode(), digest_size=8).digest()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [int.from_bytes(digest, "big", signed=True)])
