"""`manage.py jobs …` under a real worker: submit and follow a job's bar, list, cancel."""

from __future__ import annotations

import io
import re
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.core.management import CommandError, call_command
from django.utils import timezone
from rich.console import Console

from jobs.cli import CLI_OWNER_TOKEN, LogView, parse_params, show_log_batch
from jobs.logs import LogLinePayload, log_frame_text
from jobs.models import Job, JobLogLine, JobState
from jobs.selectors import job_log_text
from notifications.messages import LayerLogMessage
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


def test_submit_watch_prints_the_jobs_log_lines_in_order_each_once_above_the_end(worker: Any) -> None:
    output = run("submit", "sleep", "--param", "steps=5", "--param", "step_seconds=0.2", "--watch")

    assert printed_lines(output) == [
        "    1 │ INFO    sleeping 5 steps of 0.2 s",
        *(f"{n + 1:>5} │ INFO    step {n} of 5 done" for n in range(1, 6)),
    ]
    assert "100.0 %" in output
    assert output.rstrip().endswith('succeeded: {"steps": 5, "seconds": 1.0}')


def test_submit_watch_of_a_failing_pipeline_ends_its_log_with_the_error(worker: Any) -> None:
    out = io.StringIO()
    with pytest.raises(SystemExit) as exited:
        args = ["--param", "items=100", "--param", "pause_ms=20", "--param", "fail_at_step=2", "--watch"]
        call_command("jobs", "submit", "pipeline", *args, stdout=out)
    assert exited.value.code == 1

    texts = [text.split(" │ ", 1)[1] for text in printed_lines(out.getvalue())]
    assert texts[0] == "INFO    Step 1 of 3 · generate: started"
    assert texts[2:] == [
        "INFO    Step 2 of 3 · transform: started",
        "ERROR   Step 2 of 3 · transform failed: it failed on purpose, as asked by fail_at_step.",
    ]
    kept = run("log", str(Job.objects.get().id)).splitlines()  # the same lines, as log.txt has them
    assert [text.split(" ", 1)[1] for text in kept] == [" ".join(text.split(None, 1)) for text in texts]


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
        (["log", "not-a-uuid"], "is not a job id"),
        (["log", "7b9c2f9e-0000-0000-0000-000000000000"], "No job"),
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


# --- log lines ---------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ended_job(lines: list[tuple[str, str]], *, first: int = 1) -> Job:
    """A succeeded job (a row with no task behind it, so no worker runs it) keeping `lines`
    (level, text), numbered from `first` (lines below it were dropped)."""
    now = timezone.now()
    job = Job.objects.create(
        owner_token=CLI_OWNER_TOKEN,
        kind="sleep",
        params={"steps": 1, "step_seconds": 0},
        state=JobState.SUCCEEDED,
        created_at=now,
        started_at=now,
        finished_at=now,
        updated_at=now,
        result={"steps": 1},
        log_total=first - 1 + len(lines),
        log_dropped=first - 1,
    )
    JobLogLine.objects.bulk_create(
        JobLogLine(job=job, n=first + index, t=now, level=level, text=text) for index, (level, text) in enumerate(lines)
    )
    return job


def printed_lines(output: str) -> list[str]:
    """The log lines a watch printed, without the bar's lines."""
    return [line for line in output.splitlines() if " │ " in line]


def line(n: int, level: str = "info", text: str = "") -> LogLinePayload:
    return {"n": n, "t": "2026-11-25T12:00:03.123456Z", "level": level, "text": text or f"line {n}"}  # type: ignore[typeddict-item]


def test_watch_of_an_ended_job_prints_its_kept_lines_in_order_then_its_end() -> None:
    job = ended_job([("info", "sleeping 1 steps of 0 s"), ("warning", "careful [bold]now[/]"), ("error", "it broke")])

    output = run("watch", str(job.id))

    assert printed_lines(output) == [
        "    1 │ INFO    sleeping 1 steps of 0 s",
        "    2 │ WARNING careful [bold]now[/]",  # the text as written: no markup read into it
        "    3 │ ERROR   it broke",
    ]
    assert not ANSI.search(output)  # not a terminal: no colour, the level's word tells them apart
    assert output.rstrip().endswith('succeeded: {"steps": 1}')


def test_watch_of_a_long_log_prints_its_last_500_lines_saying_how_many_came_before() -> None:
    job = ended_job([("info", f"line {n}") for n in range(51, 701)], first=51)  # 50 dropped, 650 kept

    output = run("watch", str(job.id))

    assert f"… 200 earlier line(s): manage.py jobs log {job.id}" in output
    assert [int(text.split("│")[0]) for text in printed_lines(output)] == list(range(201, 701))


async def test_a_batch_after_a_gap_prints_the_missing_lines_from_the_database_first() -> None:
    job = await sync_to_async(ended_job)([("info", f"line {n}") for n in range(1, 6)])
    out = io.StringIO()
    view = LogView(Console(file=out, width=60), job.id)
    view.show([line(1)])
    batch = [line(4), line(5)]  # 2 and 3 never came: a batch cut to its newest lines, or one dropped
    message: LayerLogMessage = {
        "type": "job.log",
        "job_id": str(job.id),
        "first": 4,
        "last": 5,
        "text": log_frame_text(batch, total=5, dropped=0),
    }
    await show_log_batch(job.id, view, message)
    assert [int(text.split("│")[0]) for text in out.getvalue().splitlines()] == [1, 2, 3, 4, 5]


def test_log_view_prints_each_line_once_in_order() -> None:
    out = io.StringIO()
    view = LogView(Console(file=out, width=60), uuid.uuid4())
    view.show([line(1), line(2)])
    view.show([line(2), line(3)])  # a line at or below the highest shown is dropped
    view.show([line(1)])
    assert out.getvalue().splitlines() == ["    1 │ INFO    line 1", "    2 │ INFO    line 2", "    3 │ INFO    line 3"]


def test_log_view_keeps_a_long_line_on_one_line() -> None:
    out = io.StringIO()
    LogView(Console(file=out, width=40), uuid.uuid4()).show([line(1, text="x" * 300)])
    assert out.getvalue() == "    1 │ INFO    " + "x" * 300 + "\n"  # a pipe gets whole lines; a terminal wraps them


def test_log_view_colours_warnings_and_errors_on_a_terminal() -> None:
    out = io.StringIO()
    view = LogView(Console(file=out, force_terminal=True, color_system="standard", width=80), uuid.uuid4())
    view.show([line(1, "info"), line(2, "warning"), line(3, "error")])
    info, warning, error = (ANSI.findall(text) for text in out.getvalue().splitlines())
    assert info == [] and warning and error and warning != error  # each its own colour


def test_log_prints_the_kept_log_as_log_txt() -> None:
    job = ended_job([("info", "first"), ("warning", "second")])
    output = run("log", str(job.id))
    assert output == "".join(job_log_text(job_id=job.id))
    assert [text.split(" ", 1)[1] for text in output.splitlines()] == ["INFO first", "WARNING second"]
