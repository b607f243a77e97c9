"""Recovery (jobs/services/recovery.py): the sweep of runs whose worker went silent, of
jobs the broker never took, and of task messages the broker took and then lost."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone
from kombu.transport.redis import Channel as RedisChannel

from jobs.models import Job, JobState
from jobs.services import (
    SEQ_WINDOW,
    StaleSweep,
    job_cancel,
    job_create,
    job_dispatch,
    job_redispatch_undispatched,
    job_resend_lost,
    job_start,
    job_sweep_stale,
    lost_worker_error,
)
from notifications.groups import job_group
from tests.jobs.services.conftest import OWNER, fresh, lost_run, new_job
from tests.waiting import wait_until

# --- lost workers -----------------------------------------------------------------


@pytest.mark.django_db
def test_sweep_leaves_running_jobs_that_heartbeat_alone() -> None:
    alive = lost_run(attempts=1, silent_for=1)
    assert job_sweep_stale() == StaleSweep(requeued=0, failed=0, cancelled=0)
    assert (fresh(alive).state, fresh(alive).seq) == (JobState.RUNNING, 7)


@pytest.mark.django_db
def test_sweep_fails_a_silent_job_lost_max_attempts_times() -> None:
    lost = lost_run(attempts=3)
    assert job_sweep_stale() == StaleSweep(requeued=0, failed=1, cancelled=0)
    job = fresh(lost)
    assert (job.state, job.error) == (JobState.FAILED, lost_worker_error(3))
    assert job.seq > lost.seq + SEQ_WINDOW


@pytest.mark.django_db
def test_sweep_cancels_a_silent_job_that_was_asked_to_stop() -> None:
    lost = lost_run(attempts=1, cancel_requested=True)
    assert job_sweep_stale() == StaleSweep(requeued=0, failed=0, cancelled=1)
    assert fresh(lost).state == JobState.CANCELLED


@pytest.mark.django_db
def test_sweep_fails_a_silent_job_past_its_hard_time_limit_instead_of_running_it_again() -> None:
    lost = lost_run(attempts=1, silent_for=2 * 60 * 60)  # sleep's hard limit is 5460 s
    assert job_sweep_stale() == StaleSweep(requeued=0, failed=1, cancelled=0)
    job = fresh(lost)
    assert (job.state, job.attempts) == (JobState.FAILED, 1)
    assert job.error == "The job ran longer than its hard limit of 5460 seconds and was stopped."


@pytest.mark.django_db
def test_sweep_takes_a_running_row_with_no_heartbeat_by_its_last_update() -> None:
    lost = lost_run(attempts=3)
    long_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=lost.pk).update(heartbeat_at=None, updated_at=long_ago)  # a row from before heartbeats
    assert job_sweep_stale().failed == 1


@pytest.mark.django_db(transaction=True)
def test_sweep_queues_a_silent_job_again_and_a_worker_runs_it_to_the_end(worker: Any) -> None:
    lost = lost_run(attempts=1)
    Job.objects.filter(pk=lost.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    assert job_sweep_stale() == StaleSweep(requeued=1, failed=0, cancelled=0)
    assert wait_until(lambda: fresh(lost).state == JobState.SUCCEEDED, timeout=15)
    job = fresh(lost)
    assert job.attempts == 2 and job.dispatched_at is not None
    assert job.seq > lost.seq + SEQ_WINDOW


@pytest.mark.django_db(transaction=True)
async def test_sweep_publishes_the_job_queued_again(listen: Callable[[str], Any]) -> None:
    lost = await sync_to_async(lost_run)(attempts=1)
    listener = await listen(job_group(lost.id))
    with mock.patch("jobs.services.recovery.job_dispatch") as dispatch:  # no worker here: see the frame, not the run
        await sync_to_async(job_sweep_stale)()
    frame = await listener.job()
    assert (frame["state"], frame["seq"], frame["queue_position"]) == ("queued", lost.seq + SEQ_WINDOW + 1, 1)
    assert frame["progress"] == {
        "current": 0,
        "total": 3,
        "percent": 0.0,
        "message": "Its worker stopped responding; waiting to run again (attempt 2 of 3)",
        "rate": None,
        "eta_seconds": None,
    }
    dispatch.assert_called_once_with(job_id=lost.id)


@pytest.mark.django_db(transaction=True)
def test_redispatch_sends_queued_jobs_the_broker_never_took(worker: Any) -> None:
    stranded, fresh_one = new_job(), new_job()
    Job.objects.filter(pk=stranded.pk).update(updated_at=timezone.now() - timedelta(minutes=1))
    assert job_redispatch_undispatched() == 1
    assert wait_until(lambda: fresh(stranded).state == JobState.SUCCEEDED, timeout=15)
    # Just created: its own dispatch may still be on the way.
    assert (fresh(fresh_one).state, fresh(fresh_one).dispatched_at) == (JobState.QUEUED, None)


@pytest.mark.django_db
def test_sweep_task_reports_what_it_did() -> None:
    from jobs.tasks import sweep

    lost_run(attempts=3)
    assert sweep() == {"requeued": 0, "failed": 1, "cancelled": 0, "redispatched": 0, "resent": 0, "released": 0}


# --- task messages the broker lost ------------------------------------------------


def messages_of(client: Any, job: Job) -> tuple[int, int]:
    """How many task messages of the job wait in the queue, and how many a worker took
    and has not acknowledged (kombu's `unacked` hash)."""
    queued = [json.loads(raw)["headers"]["id"] for raw in client.lrange("celery", 0, -1)]
    taken = [json.loads(raw)[0]["headers"]["id"] for raw in client.hvals("unacked")]
    return queued.count(str(job.id)), taken.count(str(job.id))


def sent_long_ago(job: Job) -> Job:
    """The job as if it had waited in the queue for an hour: over JOB_REQUEUE_AFTER."""
    assert wait_until(lambda: fresh(job).dispatched_at is not None, timeout=5), "never dispatched"
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    return fresh(job)


@pytest.fixture
def busy_worker(worker: Any) -> Iterator[Callable[[], None]]:
    """The test worker busy with a long job; the function returned frees it (a cancel).

    The worker runs one task at a time and prefetches one (CELERY_WORKER_PREFETCH_MULTIPLIER),
    so what is sent while it is busy waits in the queue, where the test can see it.
    """
    blocker = job_create(owner=OWNER, kind="sleep", params={"steps": 600, "step_seconds": 0.1})
    assert wait_until(lambda: fresh(blocker).state == JobState.RUNNING, timeout=20), "the blocker never ran"

    def free() -> None:
        if not fresh(blocker).is_terminal:
            job_cancel(owner=OWNER, job_id=blocker.id)
        assert wait_until(lambda: fresh(blocker).is_terminal, timeout=10), "the blocker did not stop"

    yield free
    free()


@pytest.mark.django_db
def test_resend_lost_does_not_search_the_broker_without_jobs_queued_long_enough(settings: Any) -> None:
    settings.JOB_REQUEUE_AFTER = 60
    recent, never_sent, running = new_job(), new_job(), new_job(state=JobState.RUNNING)
    Job.objects.filter(pk=recent.pk).update(dispatched_at=timezone.now() - timedelta(seconds=50))
    Job.objects.filter(pk=running.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    with mock.patch("jobs.services.recovery.broker_task_ids_absent") as search:
        assert job_resend_lost() == 0
    search.assert_not_called()
    assert fresh(never_sent).dispatched_at is None  # `job_redispatch_undispatched`'s, not this


@pytest.mark.django_db(transaction=True)
def test_resend_lost_leaves_a_queued_job_whose_message_waits_in_the_queue(
    busy_worker: Callable[[], None], redis_client: Any
) -> None:
    job = sent_long_ago(job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0}))
    assert messages_of(redis_client, job) == (1, 0)
    assert job_resend_lost() == 0
    assert messages_of(redis_client, job) == (1, 0)  # not sent a second time
    assert fresh(job).dispatched_at == job.dispatched_at
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    assert wait_until(lambda: messages_of(redis_client, job) == (0, 0), timeout=5)  # acknowledged
    assert fresh(job).attempts == 1


@pytest.mark.django_db(transaction=True)
def test_resend_lost_sends_again_a_queued_job_whose_message_the_broker_lost(
    busy_worker: Callable[[], None], redis_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    job = sent_long_ago(job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0}))
    redis_client.delete("celery")  # as a Redis without persistence comes back from a restart
    assert messages_of(redis_client, job) == (0, 0)
    with caplog.at_level(logging.WARNING, logger="jobs.services"):
        assert job_resend_lost() == 1
    assert messages_of(redis_client, job) == (1, 0)
    resent = fresh(job)
    assert resent.state == JobState.QUEUED and resent.seq == job.seq  # a send, not a change users see
    assert resent.dispatched_at is not None and resent.dispatched_at > timezone.now() - timedelta(seconds=10)
    (line,) = [r.getMessage() for r in caplog.records if "sent again" in r.getMessage()]
    assert line.startswith(f"job {job.id} (kind sleep): the broker lost its task message")
    assert job_resend_lost() == 0  # sent just now: not looked for again yet
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    assert fresh(job).attempts == 1


@pytest.mark.django_db(transaction=True)
def test_resend_lost_leaves_a_queued_job_whose_message_a_worker_holds_unacknowledged(
    busy_worker: Callable[[], None], redis_client: Any
) -> None:
    from celery_app import app

    job = sent_long_ago(job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0}))
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        assert isinstance(channel, RedisChannel)
        # Taken as a worker prefetches it: out of the list, into `unacked`, not started.
        message = channel.basic_get("celery", no_ack=False)
        assert message is not None and message.headers["id"] == str(job.id)
        assert messages_of(redis_client, job) == (0, 1)
        assert job_resend_lost() == 0
        assert messages_of(redis_client, job) == (0, 1)
        message.reject(requeue=True)  # handed back, as a worker that shuts down does
    assert messages_of(redis_client, job) == (1, 0)
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    assert fresh(job).attempts == 1


@pytest.mark.django_db(transaction=True)
def test_a_job_sent_twice_runs_once_and_its_second_message_changes_nothing(
    busy_worker: Callable[[], None], redis_client: Any
) -> None:
    job = job_create(owner=OWNER, kind="sleep", params={"steps": 2, "step_seconds": 0})
    assert wait_until(lambda: fresh(job).dispatched_at is not None, timeout=5)
    assert job_dispatch(job_id=job.id) is True  # a lost message re-sent that was not lost after all
    assert messages_of(redis_client, job) == (2, 0)
    busy_worker()
    assert wait_until(lambda: fresh(job).state == JobState.SUCCEEDED, timeout=20), fresh(job).state
    done = fresh(job)
    # Both messages handled and acknowledged: the second found the job finished.
    assert wait_until(lambda: messages_of(redis_client, job) == (0, 0), timeout=10), messages_of(redis_client, job)
    after = fresh(job)
    assert (after.state, after.attempts, after.seq, after.finished_at) == (
        JobState.SUCCEEDED,
        1,
        done.seq,
        done.finished_at,
    )


@pytest.mark.django_db
def test_resend_lost_with_the_broker_not_answering_sends_nothing_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from celery_app import app
    from core.redis_local import free_port

    job = new_job()
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    sent_at = fresh(job).dispatched_at
    monkeypatch.setattr(app.conf, "broker_read_url", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="jobs.services"):
        assert job_resend_lost() == 0
    assert time.monotonic() - started < 10
    assert "the broker did not answer" in caplog.text
    assert (fresh(job).state, fresh(job).dispatched_at) == (JobState.QUEUED, sent_at)


@pytest.mark.django_db
def test_resend_lost_leaves_a_job_that_started_while_the_broker_was_searched() -> None:
    job = new_job()
    Job.objects.filter(pk=job.pk).update(dispatched_at=timezone.now() - timedelta(hours=1))
    sent_at = fresh(job).dispatched_at

    def search_while_it_starts(**search: Any) -> set[str]:
        assert job_start(job_id=job.id, task_id=str(job.id)) is not None  # its message was in a worker's hands
        return set(search["task_ids"])  # and the search came too late to see it

    with (
        mock.patch("jobs.services.recovery.broker_task_ids_absent", side_effect=search_while_it_starts),
        mock.patch("jobs.services.recovery.job_dispatch") as dispatch,
    ):
        assert job_resend_lost() == 0
    dispatch.assert_not_called()
    assert (fresh(job).state, fresh(job).dispatched_at) == (JobState.RUNNING, sent_at)


@pytest.mark.django_db
def test_resend_lost_that_cannot_send_leaves_the_job_to_the_never_sent_sweep() -> None:
    job = new_job()
    an_hour_ago = timezone.now() - timedelta(hours=1)
    Job.objects.filter(pk=job.pk).update(dispatched_at=an_hour_ago, updated_at=an_hour_ago)
    with (
        mock.patch("jobs.services.recovery.broker_task_ids_absent", return_value={str(job.id)}),
        mock.patch("jobs.services.recovery.job_dispatch", return_value=False),  # the broker went away meanwhile
    ):
        assert job_resend_lost() == 0
    assert (fresh(job).state, fresh(job).dispatched_at) == (JobState.QUEUED, None)
    with mock.patch("jobs.services.recovery.job_dispatch", return_value=True) as dispatch:
        assert job_redispatch_undispatched() == 1
    dispatch.assert_called_once_with(job_id=job.id)
