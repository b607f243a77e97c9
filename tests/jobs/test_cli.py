"""`manage.py jobs …` under a real worker: submit and follow a job's bar, list, cancel."""

from __future__ import annotations

import io
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from jobs.cli import CLI_OWNER_TOKEN, parse_params
from jobs.models import Job, JobState
from tests.waiting import wait_until

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args: str) -> str:
    out = io.StringIO()
    call_command("jobs", *args, stdout=out)
    return out.getvalue()


def test_submit_watch_follows_the_stream_to_success(worker: Any) -> None:
    output = run("submit", "sleep", "--param", "steps=5", "--param", "step_seconds=0.05", "--watch")

    job = Job.objects.get()
    assert job.owner_token == CLI_OWNER_TOKEN
    assert job.state == JobState.SUCCEEDED
    assert f"Started sleep job {job.id}" in output
    assert "succeeded" in output and "100.0 %" in output
    assert output.rstrip().endswith('succeeded: {"steps": 5, "seconds": 0.25}')


def test_submit_watch_of_a_failing_job_exits_1_with_its_error(worker: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        run(
            "submit", "sleep", "--param", "steps=3", "--param", "step_seconds=0", "--param", "fail_at_step=2", "--watch"
        )
    assert exited.value.code == 1


def test_submit_without_watch_returns_at_once_with_the_id() -> None:
    output = run("submit", "sleep", "--param", "steps=1")
    job = Job.objects.get()
    assert output.strip() == f"Started sleep job {job.id}"


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["submit", "nope"], "Unknown kind 'nope'"),
        (["submit", "primes", "--param", "limit=abc"], "limit: Must be an integer."),
        (["submit", "primes", "--param", "limit=1"], "limit"),
        (["submit", "primes", "--param", "colour=red"], "colour: Unknown parameter"),
        (["submit", "primes", "--param", "limit"], "is not key=value"),
        (["submit", "primes", "--param", "limit=5", "--param", "limit=6"], "given twice"),
        (["submit", "primes", "--user", "ghost"], "No user 'ghost'"),
        (["watch", "not-a-uuid"], "is not a job id"),
        (["watch", "7b9c2f9e-0000-0000-0000-000000000000"], "No job"),
        (["cancel", "7b9c2f9e-0000-0000-0000-000000000000"], "No job"),
    ],
)
def test_bad_input_is_a_command_error_naming_the_problem(args: list[str], names: str) -> None:
    with pytest.raises(CommandError, match=names.replace("(", r"\(")):
        run(*args)
    assert not Job.objects.exists()


def test_list_and_cancel(worker: Any) -> None:
    run("submit", "sleep", "--param", "steps=100", "--param", "step_seconds=0.1")
    job = Job.objects.get()

    assert str(job.id) in run("list")
    assert run("list", "--state", "failed").strip() == "No jobs."
    said = run("cancel", str(job.id))
    assert "cancelled" in said or "asked to stop" in said
    assert wait_until(lambda: Job.objects.get(pk=job.id).state == JobState.CANCELLED, timeout=10)
    assert str(job.id) in run("list", "--state", "cancelled")
    with pytest.raises(CommandError, match="already ended"):
        run("cancel", str(job.id))


def test_parse_params_keeps_values_as_text_for_the_kind_to_check() -> None:
    assert parse_params(["limit = 5000000", "name=a=b"]) == {"limit": "5000000", "name": "a=b"}
