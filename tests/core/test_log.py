"""Logs about a job carry its id and kind (core/log.py), and the Celery task names
stay the friendly ones `celery inspect` and Flower show."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.utils import timezone

from core.log import NO_JOB, JobContextFilter, JsonFormatter, current_job_log_context, job_log_context
from jobs.models import Job
from jobs.owners import Owner
from jobs.services import job_create
from tests.processes import stop_process
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
OWNER = Owner(token="l" * 32)


@pytest.fixture
def job_records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """caplog at INFO with the filter settings.LOGGING puts on the console handler."""
    job_filter = JobContextFilter()
    caplog.handler.addFilter(job_filter)
    caplog.set_level(logging.INFO)
    yield caplog
    caplog.handler.removeFilter(job_filter)


# --- a job run by a real worker ------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_every_line_a_worker_logs_while_running_a_job_carries_its_id_and_kind(
    worker: Any, job_records: pytest.LogCaptureFixture
) -> None:
    job = job_create(owner=OWNER, kind="sleep", params={"steps": 2, "step_seconds": 0, "fail_at_step": 2})
    assert wait_until(lambda: Job.objects.get(pk=job.pk).is_terminal, timeout=20), "the job never ended"
    # The worker logs the outcome, then Celery's trace its own line: wait for both.
    assert wait_until(
        lambda: any(r.name == "celery.app.trace" and str(job.id) in r.getMessage() for r in job_records.records),
        timeout=10,
    ), [r.getMessage() for r in job_records.records]
    started = [r for r in job_records.records if r.getMessage() == f"job {job.id} (kind sleep): started"]
    assert started, [r.getMessage() for r in job_records.records]
    # Everything the worker's thread logged from the task's start on (the consumer's
    # "received" line comes before the task and names the task id itself).
    in_worker = [r for r in job_records.records if r.thread == started[0].thread and r.name != "celery.worker.strategy"]
    assert any("failed" in r.getMessage() for r in in_worker), [r.getMessage() for r in in_worker]
    for record in in_worker:
        assert fields(record) == (str(job.id), "sleep", f" [job={job.id} kind=sleep]"), record.getMessage()


def _ended(job: Job) -> bool:
    return Job.objects.get(pk=job.pk).is_terminal


@pytest.mark.django_db(transaction=True)
def test_the_job_context_ends_with_the_task(worker: Any, job_records: pytest.LogCaptureFixture) -> None:
    first = job_create(owner=OWNER, kind="sleep", params={"steps": 1, "step_seconds": 0})
    second = job_create(owner=OWNER, kind="primes", params={"limit": 1000})
    assert wait_until(lambda: _ended(first) and _ended(second), timeout=20), "a job never ended"
    # The solo worker takes the second task once the first is done: the consumer's
    # "received" line for it falls between the two runs, in no job's context.
    received = [
        r for r in job_records.records if r.name == "celery.worker.strategy" and str(second.id) in r.getMessage()
    ]
    assert received, [r.getMessage() for r in job_records.records]
    assert fields(received[0]) == (NO_JOB, NO_JOB, "")
    for record in job_records.records:
        for job in (first, second):
            if f"job {job.id} (kind" in record.getMessage():
                assert fields(record)[:2] == (str(job.id), job.kind), record.getMessage()


@pytest.mark.django_db(transaction=True)
def test_a_prefork_worker_process_writes_the_job_id_and_kind_on_its_lines(
    live_server_env: dict[str, str], tmp_path: Path
) -> None:
    """As the Procfile runs it: `celery worker -l info`, prefork, logging through settings.LOGGING."""
    from jobs.tasks import run_job

    queue = f"log-test-{os.getpid()}"  # its own queue: the in-process test worker never takes this job
    log = tmp_path / "worker.log"
    command = [str(Path(sys.executable).parent / "celery"), "-A", "celery_app", "worker", "-P", "prefork"]
    command += ["-c", "1", "-l", "INFO", "-Q", queue, "-n", f"{queue}@%h", "--without-mingle", "--without-gossip"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=live_server_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        now = timezone.now()
        job = Job.objects.create(
            owner_token=OWNER.token or "", kind="sleep", params={"steps": 1, "step_seconds": 0}, seq=1,
            created_at=now, updated_at=now,
        )  # fmt: skip
        run_job.apply_async(args=(str(job.id),), task_id=str(job.id), queue=queue)
        assert wait_until(lambda: _ended(job), timeout=60), log.read_text()
        tag = f"[job={job.id} kind=sleep]"
        assert wait_until(lambda: "succeeded in" in log.read_text(), timeout=10), log.read_text()
        lines = [line for line in log.read_text().splitlines() if str(job.id) in line and "received" not in line]
        assert any("started" in line for line in lines), lines
        assert lines and all(tag in line for line in lines), lines
    finally:
        stop_process(process, timeout=20)


# --- the filter and the formats -----------------------------------------------------


def fields(record: logging.LogRecord) -> tuple[str, str, str]:
    """The job fields JobContextFilter put on a record."""
    return (getattr(record, "job_id", ""), getattr(record, "job_kind", ""), getattr(record, "job_context", ""))


def _record(message: str = "hello", **extra: Any) -> logging.LogRecord:
    record = logging.LogRecord("jobs.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_a_line_outside_any_job_says_so() -> None:
    record = _record()
    assert JobContextFilter().filter(record)
    assert fields(record) == (NO_JOB, NO_JOB, "")


def test_a_line_inside_a_job_context_carries_its_id_and_kind() -> None:
    with job_log_context(job_id="7b9c", kind="primes"):
        record = _record()
        JobContextFilter().filter(record)
    assert current_job_log_context() is None
    assert fields(record) == ("7b9c", "primes", " [job=7b9c kind=primes]")


def test_extra_fields_of_the_call_win_over_the_context() -> None:
    with job_log_context(job_id="7b9c", kind="primes"):
        record = _record(job_id="other", job_kind="sleep")
        JobContextFilter().filter(record)
    assert fields(record) == ("other", "sleep", " [job=other kind=sleep]")


def test_the_json_format_writes_one_object_with_the_job_fields() -> None:
    with job_log_context(job_id="7b9c", kind="primes"):
        record = _record("checked %d numbers")
        record.args = (340,)
        JobContextFilter().filter(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "checked 340 numbers"
    assert (entry["job_id"], entry["job_kind"], entry["level"], entry["logger"]) == (
        "7b9c",
        "primes",
        "INFO",
        "jobs.test",
    )
    assert "\n" not in JsonFormatter().format(record)


def test_settings_put_the_filter_on_the_console_handler() -> None:
    from django.conf import settings

    config: dict[str, Any] = settings.LOGGING
    assert "job_context" in config["handlers"]["console"]["filters"]
    assert config["filters"]["job_context"]["()"] == "core.log.JobContextFilter"
    assert "%(job_context)s" in config["formatters"]["plain"]["format"]


def test_an_unknown_log_format_stops_start_up_naming_it() -> None:
    env = {"LOG_FORMAT": "xml", "DEBUG": "true", "PATH": "/usr/bin:/bin"}  # DEBUG: no SECRET_KEY needed
    result = subprocess.run(
        [sys.executable, "-c", "import core.settings"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "LOG_FORMAT must be one of plain, json, not 'xml'" in result.stderr


# --- friendly task names --------------------------------------------------------------


def test_celery_task_names_are_the_friendly_ones() -> None:
    from celery_app import app

    app.loader.import_default_modules()
    names = {name for name in app.tasks if not name.startswith("celery.")}
    assert {"jobs.run_job", "jobs.sweep", "jobs.purge_finished", "jobs.clear_sessions"} <= names
    assert not any(name.startswith("jobs.tasks.") for name in names), names  # no module-path names


def test_a_worker_answers_celery_inspect_with_the_friendly_names(worker: Any) -> None:
    from celery_app import app

    replies = app.control.inspect(timeout=5).registered() or {}
    assert replies, "no worker answered `celery inspect registered`"
    for registered in replies.values():
        assert "jobs.run_job" in registered and "jobs.sweep" in registered
