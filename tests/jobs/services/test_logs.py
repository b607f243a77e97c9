"""Keeping a running job's log lines (jobs/services/logs.py `job_log_append`): numbered
from the row across attempts, the last JOB_LOG_MAX_LINES kept, nothing kept for a run
that is no longer the row's, and `log_bytes` always what the kept lines hold."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.test import override_settings

from jobs.logs import text_lines
from jobs.models import Job, JobLogLine, JobState
from jobs.services.logs import PendingLine, job_log_append
from tests.jobs.services.conftest import fresh, new_job

pytestmark = pytest.mark.django_db

AT = datetime(2026, 11, 25, 12, 0, 3, 123456, tzinfo=UTC)


def pending(*texts: str) -> list[PendingLine]:
    return [PendingLine(t=AT, level="info", text=text) for text in texts]


def running(*, attempts: int = 1) -> Job:
    job = new_job(state=JobState.RUNNING)
    Job.objects.filter(pk=job.pk).update(attempts=attempts)
    return fresh(job)


def kept(job: Job) -> list[tuple[int, str]]:
    return list(JobLogLine.objects.filter(job=job).order_by("n").values_list("n", "text"))


def kept_bytes(job: Job) -> int:
    return sum(len(text.encode()) for _, text in kept(job))


def test_a_batch_is_numbered_from_1_and_its_counts_returned() -> None:
    job = running()

    batch = job_log_append(job_id=job.id, attempt=1, lines=pending("one", "two", "three"))

    assert batch is not None
    assert [(line.n, line.text) for line in batch.lines] == [(1, "one"), (2, "two"), (3, "three")]
    assert (batch.total, batch.dropped) == (3, 0)
    assert kept(job) == [(1, "one"), (2, "two"), (3, "three")]
    assert (fresh(job).log_total, fresh(job).log_dropped) == (3, 0)


def test_numbering_goes_on_across_attempts() -> None:
    job = running(attempts=1)
    job_log_append(job_id=job.id, attempt=1, lines=pending("a", "b", "c"))
    Job.objects.filter(pk=job.pk).update(attempts=2)  # the run started again after a lost worker

    batch = job_log_append(job_id=job.id, attempt=2, lines=pending("d", "e"))

    assert batch is not None
    assert [line.n for line in batch.lines] == [4, 5]
    assert kept(job) == [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")]
    assert fresh(job).log_total == 5


@override_settings(JOB_LOG_MAX_LINES=3)
def test_a_batch_bigger_than_the_limit_keeps_its_last_lines_and_counts_the_rest_dropped() -> None:
    job = running()

    batch = job_log_append(job_id=job.id, attempt=1, lines=pending("l1", "l2", "l3", "l4", "l5"))

    assert batch is not None
    assert [(line.n, line.text) for line in batch.lines] == [(3, "l3"), (4, "l4"), (5, "l5")]
    assert (batch.total, batch.dropped) == (5, 2)
    assert kept(job) == [(3, "l3"), (4, "l4"), (5, "l5")]
    assert (fresh(job).log_total, fresh(job).log_dropped) == (5, 2)


@override_settings(JOB_LOG_MAX_LINES=3)
def test_past_the_limit_the_oldest_kept_lines_are_dropped() -> None:
    job = running()
    job_log_append(job_id=job.id, attempt=1, lines=pending("l1", "l2"))

    batch = job_log_append(job_id=job.id, attempt=1, lines=pending("l3", "l4"))

    assert batch is not None
    assert (batch.total, batch.dropped) == (4, 1)
    assert kept(job) == [(2, "l2"), (3, "l3"), (4, "l4")]


@override_settings(JOB_LOG_MAX_LINES=3)
def test_a_big_batch_after_kept_lines_drops_them_all_and_its_own_oldest() -> None:
    job = running()
    job_log_append(job_id=job.id, attempt=1, lines=pending("old1", "old2"))

    batch = job_log_append(job_id=job.id, attempt=1, lines=pending("n3", "n4", "n5", "n6"))

    assert batch is not None
    assert (batch.total, batch.dropped) == (6, 3)
    assert kept(job) == [(4, "n4"), (5, "n5"), (6, "n6")]


@pytest.mark.parametrize("state", [JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED])
def test_a_job_that_is_not_running_keeps_nothing(state: JobState) -> None:
    job = running()
    Job.objects.filter(pk=job.pk).update(state=state)

    assert job_log_append(job_id=job.id, attempt=1, lines=pending("late")) is None

    assert kept(job) == []
    assert (fresh(job).log_total, fresh(job).log_bytes) == (0, 0)


def test_a_stale_attempt_keeps_nothing() -> None:
    job = running(attempts=1)
    job_log_append(job_id=job.id, attempt=1, lines=pending("first run"))
    Job.objects.filter(pk=job.pk).update(attempts=2)

    assert job_log_append(job_id=job.id, attempt=1, lines=pending("the lost worker, still writing")) is None

    assert kept(job) == [(1, "first run")]
    assert fresh(job).log_total == 1


@override_settings(JOB_LOG_MAX_LINES=3)
def test_log_bytes_goes_up_as_lines_are_kept_and_down_as_they_are_dropped() -> None:
    job = running()
    # Bytes, not characters: "é" is two bytes in UTF-8, "€" three.
    job_log_append(job_id=job.id, attempt=1, lines=pending("é" * 10, "€" * 10))
    assert fresh(job).log_bytes == 20 + 30 == kept_bytes(job)

    job_log_append(job_id=job.id, attempt=1, lines=pending("x"))
    assert fresh(job).log_bytes == 51 == kept_bytes(job)

    job_log_append(job_id=job.id, attempt=1, lines=pending("yy", "zzz"))  # drops "é…" and "€…"
    assert fresh(job).log_bytes == 1 + 2 + 3 == kept_bytes(job)

    job_log_append(job_id=job.id, attempt=1, lines=pending(*["w"] * 7))  # more than it keeps
    assert fresh(job).log_bytes == 3 == kept_bytes(job)


def test_an_empty_batch_keeps_nothing() -> None:
    job = running()

    assert job_log_append(job_id=job.id, attempt=1, lines=[]) is None

    assert fresh(job).log_total == 0


def test_text_with_a_lone_surrogate_is_kept_with_a_replacement_character() -> None:
    job = running()
    undecodable = b"name: caf\xe9.csv".decode(errors="surrogateescape")  # as os.fsdecode gives it

    lines = [PendingLine(t=AT, level="info", text=text) for text in text_lines(undecodable)]
    batch = job_log_append(job_id=job.id, attempt=1, lines=lines)

    assert batch is not None
    assert kept(job) == [(1, "name: caf\ufffd.csv")]
    assert fresh(job).log_bytes == len("name: caf\ufffd.csv".encode())
