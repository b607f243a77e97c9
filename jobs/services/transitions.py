"""The state transition of a job: the one place its row changes state, and the seq rules.

A change is one fenced compare-and-set, `UPDATE … SET seq = Greatest(seq + gap,
seq_above + 1) WHERE state IN (…) [AND …]`, whichever process makes it (worker, web,
sweeper): of two writers racing for one row, the one that commits second finds it no
longer matching and changes nothing. The change is published once its transaction
commits, so nobody sees a state the database may still roll back; so is an end's email,
when its owner asked for one (jobs/services/notify.py).

Seq rules (every frame's `seq` is above every seq already published for the job):
- a change takes at least `seq_gap` above the row's seq, and above `seq_above`, the last
  seq the running worker published (its terminal write);
- a running worker publishes progress with seqs of its own, writing the row behind
  (jobs/services/run.py `RunningJob`), never more than SEQ_WINDOW ahead of it;
- so any other writer of a running job (a cancel's end, a restart, the sweeper) jumps
  OTHER_WRITER_SEQ_GAP past the row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from typing import Any

from django.db import transaction
from django.db.models import F, Q, Value
from django.db.models.functions import Greatest

from jobs.models import Job, JobState
from jobs.selectors import job_queue_position
from jobs.services.notify import job_notify_on_commit
from notifications.publish import publish_job_change

SEQ_WINDOW = 1000  # how far a running worker's published seq may run ahead of its row
# A writer other than the worker running the job (a restart, the sweeper) jumps past
# every seq that worker may have published and not written yet.
OTHER_WRITER_SEQ_GAP = SEQ_WINDOW + 1


def job_transition(
    *,
    job_id: uuid.UUID,
    from_states: Collection[str],
    seq_above: int = 0,
    seq_gap: int = 1,
    where: Q | None = None,
    before_commit: Callable[[], None] | None = None,
    **fields: Any,
) -> Job | None:
    """Applies `fields` and bumps `seq` if the job is in one of `from_states` (and
    matches `where`, when given).

    The new seq is at least `seq_gap` above the row's, and above `seq_above` (the last
    seq a running worker published). Returns the job as changed, or None when it did
    not match. The change is published once its transaction commits. `before_commit`,
    when given, runs in that transaction once the row matched; should it raise, nothing
    is changed.
    """
    with transaction.atomic():
        seq = Greatest(F("seq") + seq_gap, Value(seq_above + 1))
        matching = Job.objects.filter(pk=job_id, state__in=from_states)
        if where is not None:
            matching = matching.filter(where)
        updated = matching.update(seq=seq, **fields)
        if not updated:
            return None
        if before_commit is not None:
            before_commit()
        job = Job.objects.get(pk=job_id)
    job_publish(job=job)
    job_notify_on_commit(job=job)  # an end its owner asked to be emailed about
    return job


def job_publish(*, job: Job) -> None:
    """Publishes the job as it is once the current transaction commits (at once outside one)."""
    position = job_queue_position(job=job) if job.state == JobState.QUEUED else None
    transaction.on_commit(lambda: publish_job_change(job, queue_position=position))
