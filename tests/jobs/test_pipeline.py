"""Multi-step kinds: the Steps helper (one overall percent over weighted steps, the
step named in the message, order enforced, failures naming their step) and the
`pipeline` kind, run directly and on a real worker streaming to a WebSocket."""

from __future__ import annotations

import asyncio
import csv
import json
import random
import re
import statistics
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client
from websockets.asyncio.client import connect

from jobs.builtin_kinds import PIPELINE_LARGEST_START, collatz_steps, run_pipeline
from jobs.exceptions import JobCancelled, JobError
from jobs.models import Job
from jobs.progress import Progress, ProgressUpdate
from jobs.steps import Steps
from tests.conftest import LiveServer
from tests.log_lines import LogLines
from tests.waiting import wait_until


class Recorder:
    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []

    def __call__(self, update: ProgressUpdate) -> bool:
        self.updates.append(update)
        return False

    @property
    def seen(self) -> list[tuple[float | None, str]]:
        return [(u.current, u.message) for u in self.updates]


def reporter(result_dir: Path | None = None, log: LogLines | None = None) -> tuple[Any, Recorder]:
    recorder = Recorder()
    progress = Progress(emit=recorder, max_rate=0, result_dir=result_dir, log=log)
    return progress.as_function(), recorder  # every call emits


STEP_MESSAGE = re.compile(r"^Step (\d) of 3 · (\w+)")


def step_names(messages: list[str]) -> list[str]:
    """The steps the messages name, in order, each run of the same step once."""
    names: list[str] = []
    for message in messages:
        match = STEP_MESSAGE.match(message)
        assert match is not None, message
        if not names or names[-1] != match.group(2):
            names.append(match.group(2))
    return names


# --- Steps -------------------------------------------------------------------------------


def test_steps_map_each_step_onto_its_weighted_share_of_100() -> None:
    report, recorder = reporter()
    steps = Steps(report, [("load", 1), ("crunch", 3)])

    with steps.step("load") as step:
        step(current=1, total=2, message="half")
    with steps.step("crunch") as step:
        step(current=50, total=100, message="half")

    assert recorder.seen == [
        (0, "Step 1 of 2 · load: starting"),
        (12.5, "Step 1 of 2 · load: half"),
        (25, "Step 1 of 2 · load: done"),
        (25, "Step 2 of 2 · crunch: starting"),
        (62.5, "Step 2 of 2 · crunch: half"),
        (100, "Step 2 of 2 · crunch: done"),
    ]
    assert {u.total for u in recorder.updates} == {100}


def test_step_without_a_total_holds_the_bar_and_changes_the_message() -> None:
    report, recorder = reporter()
    steps = Steps(report, [("a", 1), ("b", 1)])
    with steps.step("a") as step:
        step(current=3, total=4)
        step(message="waiting for the far end")
        step(current=10, total=4)  # over its total: the step is full, never past its share
    assert recorder.seen[1:4] == [
        (37.5, "Step 1 of 2 · a"),
        (37.5, "Step 1 of 2 · a: waiting for the far end"),
        (50, "Step 1 of 2 · a"),
    ]


def test_steps_out_of_order_unknown_or_repeated_raise_naming_the_next_step() -> None:
    report, _ = reporter()
    steps = Steps(report, [("a", 1), ("b", 1)])
    with pytest.raises(ValueError, match="Step 'b' out of order: the next step is a"), steps.step("b"):
        pass
    with pytest.raises(ValueError, match="Unknown step 'c'; the steps are: a, b"), steps.step("c"):
        pass
    with steps.step("a"):
        pass
    with pytest.raises(ValueError, match="Step 'a' out of order: the next step is b"), steps.step("a"):
        pass


@pytest.mark.parametrize(
    ("declared", "words"),
    [
        ([], "at least one"),
        ([("a", 1), ("a", 2)], "repeated: a"),
        ([("a", 0)], "positive"),
        ([("a", float("nan"))], "positive"),
    ],
)
def test_steps_refuse_a_bad_declaration(declared: list[tuple[str, float]], words: str) -> None:
    report, _ = reporter()
    with pytest.raises(ValueError, match=words):
        Steps(report, declared)


def test_job_error_inside_a_step_fails_naming_the_step() -> None:
    report, recorder = reporter()
    steps = Steps(report, [("a", 1), ("b", 1), ("c", 1)])
    with steps.step("a"):
        pass
    with pytest.raises(JobError) as raised, steps.step("b") as step:
        step(current=1, total=2)
        raise JobError("the far end said no.")
    assert str(raised.value) == "Step 2 of 3 · b failed: the far end said no."
    assert recorder.updates[-1].message == "Step 2 of 3 · b"  # no "done" after a failure


def test_other_errors_keep_their_type_with_a_note_naming_the_step() -> None:
    report, _ = reporter()
    steps = Steps(report, [("a", 1)])
    with pytest.raises(KeyError) as raised, steps.step("a"):
        raise KeyError("x")
    assert raised.value.__notes__ == ["in Step 1 of 1 · a"]


def test_cancel_inside_a_step_passes_through_unchanged() -> None:
    report, _ = reporter()
    steps = Steps(report, [("a", 1)])
    cancelled = JobCancelled()
    with pytest.raises(JobCancelled) as raised, steps.step("a"):
        raise cancelled
    assert raised.value is cancelled


SECONDS = r"[\d,]+\.\d\d s"


def test_each_step_logs_its_start_and_its_end_with_its_time_and_figures() -> None:
    log = LogLines()
    steps = Steps(reporter(log=log)[0], [("load", 1), ("crunch", 3)])
    with steps.step("load") as step:
        step.figures = "loaded 12 rows"
    with steps.step("crunch") as step:
        step.log("halfway\nstill going", "debug")

    patterns = [
        ("Step 1 of 2 · load: started", "info"),
        (f"Step 1 of 2 · load: done in {SECONDS}: loaded 12 rows", "info"),
        ("Step 2 of 2 · crunch: started", "info"),
        ("Step 2 of 2 · crunch: halfway", "debug"),
        ("Step 2 of 2 · crunch: still going", "debug"),  # each line of a text names the step
        (f"Step 2 of 2 · crunch: done in {SECONDS}", "info"),  # no figures set: none said
    ]
    assert len(log.lines) == len(patterns)
    for (text, level), (pattern, expected_level) in zip(log.lines, patterns, strict=True):
        assert re.fullmatch(pattern, text) and level == expected_level, (text, level)


@pytest.mark.parametrize("raised", [JobError("the far end said no."), KeyError("internals"), JobCancelled()])
def test_a_step_that_does_not_finish_logs_no_done_line(raised: Exception) -> None:
    log = LogLines()
    with pytest.raises(type(raised)), Steps(reporter(log=log)[0], [("a", 1)]).step("a"):
        raise raised
    assert log.texts == ["Step 1 of 1 · a: started"]  # the run's end writes why (jobs/services/run.py)


def test_step_result_path_is_the_jobs(tmp_path: Path) -> None:
    report, _ = reporter(tmp_path)
    with Steps(report, [("a", 1)]).step("a") as step:
        assert step.result_path("out.csv") == tmp_path / "out.csv"


# --- the pipeline kind, run directly ------------------------------------------------------------


@pytest.mark.parametrize(("start", "steps"), [(1, 0), (2, 1), (3, 7), (6, 8), (27, 111), (97, 118), (837_799, 524)])
def test_collatz_steps_matches_known_walks(start: int, steps: int) -> None:
    assert collatz_steps(start) == steps


def expected_pipeline(items: int, seed: int) -> dict[str, Any]:
    """The pipeline's result, worked out the plain way."""
    rng = random.Random(seed)
    numbers = [rng.randint(1, PIPELINE_LARGEST_START) for _ in range(items)]
    lengths = [collatz_steps(n) for n in numbers]
    longest = lengths.index(max(lengths))
    return {
        "items": items,
        "mean_steps": round(statistics.fmean(lengths), 3),
        "median_steps": statistics.median_low(lengths),
        "max_steps": lengths[longest],
        "longest_start": numbers[longest],
    }


@pytest.mark.parametrize(("items", "seed"), [(1, 0), (7, 3), (1000, 1), (1001, 42)])
def test_pipeline_result_is_the_plain_computation(tmp_path: Path, items: int, seed: int) -> None:
    report, _ = reporter(tmp_path)
    assert run_pipeline(report, items=items, seed=seed) == expected_pipeline(items, seed)
    with (tmp_path / "collatz-histogram.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sum(int(row["numbers"]) for row in rows) == items


def test_pipeline_reports_each_step_in_order_with_the_percent_never_going_back(tmp_path: Path) -> None:
    report, recorder = reporter(tmp_path)
    run_pipeline(report, items=1000)

    assert step_names([u.message for u in recorder.updates]) == ["generate", "transform", "summarize"]
    percents = [u.current or 0.0 for u in recorder.updates]
    assert None not in [u.current for u in recorder.updates]
    assert percents == sorted(percents)
    assert (percents[0], percents[-1]) == (0, 100)
    assert len(recorder.updates) == 3 * (20 + 2)  # 20 chunks a step, with its start and its end


def test_pipeline_logs_each_step_start_and_end_with_its_figures(tmp_path: Path) -> None:
    log = LogLines()
    result = run_pipeline(reporter(tmp_path, log)[0], items=1000, seed=7)

    ends = [
        f"Step 1 of 3 · generate: done in {SECONDS}: drew 1,000 numbers from 1 to 1,000,000 \\(seed 7\\)",
        f"Step 2 of 3 · transform: done in {SECONDS}: walked 1,000 numbers, "
        f"the longest {result['max_steps']} steps \\(from {result['longest_start']:,}\\)",
        f"Step 3 of 3 · summarize: done in {SECONDS}: \\d+ buckets of 25 steps written to collatz-histogram.csv",
    ]
    names = ["generate", "transform", "summarize"]
    assert log.at("info") == log.texts and len(log.texts) == 6  # a start and an end a step, not one per chunk
    for number, (name, end) in enumerate(zip(names, ends, strict=True)):
        assert log.texts[2 * number] == f"Step {number + 1} of 3 · {name}: started"
        assert re.fullmatch(end, log.texts[2 * number + 1]), log.texts[2 * number + 1]


def test_pipeline_failing_step_fails_naming_it_halfway_through_its_share(tmp_path: Path) -> None:
    report, recorder = reporter(tmp_path)
    with pytest.raises(JobError) as raised:
        run_pipeline(report, items=100, fail_at_step=2)
    assert str(raised.value) == "Step 2 of 3 · transform failed: it failed on purpose, as asked by fail_at_step."
    last = recorder.updates[-1]
    assert last.message.startswith("Step 2 of 3 · transform")
    assert last.current is not None and 100 / 6 < last.current < 100 * 5 / 6


# --- on a real worker ------------------------------------------------------------------------------

TIMEOUT = 30.0  # seconds for the job: queued behind at most another test's short job


def test_pipeline_with_a_failing_step_ends_failed_on_a_worker_with_the_step_in_its_error(worker: Any) -> None:
    client = Client()
    body = {"kind": "pipeline", "params": {"items": 100, "fail_at_step": 3}}
    response = client.post("/api/jobs/", json.dumps(body), content_type="application/json")
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]

    assert wait_until(lambda: Job.objects.get(pk=job_id).is_terminal, timeout=TIMEOUT)
    job = client.get(f"/api/jobs/{job_id}/").json()
    assert job["state"] == "failed"
    assert job["error"] == "Step 3 of 3 · summarize failed: it failed on purpose, as asked by fail_at_step."


async def test_pipeline_frames_name_each_step_in_order_and_end_at_100(live_server: LiveServer, worker: Any) -> None:
    async with httpx.AsyncClient(base_url=live_server.url, timeout=TIMEOUT) as client:
        assert (await client.get("/")).status_code == 200  # the visitor's session
        socket = connect(
            f"{live_server.ws_url}/ws/jobs/",
            origin=live_server.url,  # type: ignore[arg-type]
            additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}"},
            open_timeout=TIMEOUT,
        )
        async with socket as ws:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert snapshot["type"] == "snapshot"
            # 20 pauses of 40 ms a step: each step lasts about 0.8 s, several frames at 10 a second.
            response = await client.post(
                "/api/jobs/",
                json={"kind": "pipeline", "params": {"items": 200, "pause_ms": 40}},
                headers={"X-CSRFToken": client.cookies["csrftoken"]},
            )
            assert response.status_code == 201, response.text
            job_id = response.json()["id"]
            jobs: list[dict[str, Any]] = []
            while not jobs or jobs[-1]["state"] not in {"succeeded", "failed", "cancelled"}:
                frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                if frame["type"] == "job" and frame["job"]["id"] == job_id:
                    jobs.append(frame["job"])

    assert jobs[-1]["state"] == "succeeded", jobs[-1]
    progress = [job["progress"] for job in jobs if job["progress"] is not None]
    assert step_names([p["message"] for p in progress]) == ["generate", "transform", "summarize"]
    percents = [p["percent"] for p in progress]
    assert percents == sorted(percents), f"the bar went back: {percents}"
    assert percents[-1] == 100.0
    assert {p["total"] for p in progress} == {100}
    assert jobs[-1]["result"]["items"] == 200
