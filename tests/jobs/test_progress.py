"""The reporter a kind calls (jobs.progress.Progress), driven by a clock the test sets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from jobs.exceptions import JobCancelled
from jobs.progress import RATE_WINDOW, Progress, ProgressUpdate


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []
        self.cancel = False

    def __call__(self, update: ProgressUpdate) -> bool:
        self.updates.append(update)
        return self.cancel

    @property
    def currents(self) -> list[float | None]:
        return [u.current for u in self.updates]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emitted() -> Recorder:
    return Recorder()


@pytest.fixture
def report(clock: Clock, emitted: Recorder) -> Progress:
    return Progress(emit=emitted, max_rate=10, clock=clock)  # one frame per 0.1 s


# --- coalescing ------------------------------------------------------------------


def test_first_call_emits_at_once(report: Progress, emitted: Recorder) -> None:
    report(current=1, total=10, message="one")
    assert [(u.current, u.total, u.message) for u in emitted.updates] == [(1, 10, "one")]


def test_calls_inside_the_interval_are_coalesced(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=0)
    clock.now += 0.05
    report(current=1)
    report(current=2)
    assert emitted.currents == [0]


def test_call_past_the_interval_emits_the_newest_values(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=0)
    clock.now += 0.05
    report(current=1, message="one")
    clock.now += 0.06
    report(current=2, total=5, message="two")
    assert [(u.current, u.total, u.message) for u in emitted.updates] == [(0, None, ""), (2, 5, "two")]


@pytest.mark.parametrize(("max_rate", "seconds"), [(10, 2.0), (10, 10.0), (25, 3.0), (1, 5.0)])
def test_emitted_frames_are_bounded_by_max_rate(
    clock: Clock, emitted: Recorder, max_rate: float, seconds: float
) -> None:
    report = Progress(emit=emitted, max_rate=max_rate, clock=clock)
    calls = 5000
    for n in range(calls):
        clock.now = 1000.0 + seconds * n / calls
        report(current=n)
    assert len(emitted.updates) <= max_rate * seconds + 1
    assert len(emitted.updates) >= max_rate * seconds - 1  # and the rate is actually used


def test_max_rate_zero_emits_every_call(clock: Clock, emitted: Recorder) -> None:
    report = Progress(emit=emitted, max_rate=0, clock=clock)
    for n in range(5):
        report(current=n)
    assert emitted.currents == [0, 1, 2, 3, 4]


def test_message_is_cut_to_500_characters(report: Progress, emitted: Recorder) -> None:
    report(current=1, message="x" * 600)
    assert emitted.updates[0].message == "x" * 500


# --- unsent and flush ------------------------------------------------------------


def test_unsent_is_none_when_nothing_is_pending(report: Progress) -> None:
    assert report.unsent() is None
    report(current=1)
    assert report.unsent() is None


def test_unsent_returns_the_last_coalesced_values_once(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=1)
    clock.now += 0.01
    report(current=2, total=9, message="two")
    report(current=3, total=9, message="three")
    update = report.unsent()
    assert update is not None
    assert (update.current, update.total, update.message) == (3, 9, "three")
    assert report.unsent() is None
    assert emitted.currents == [1]  # unsent() hands the values over; it does not emit them


def test_flush_emits_the_coalesced_values(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=1)
    clock.now += 0.01
    report(current=2)
    report.flush()
    assert emitted.currents == [1, 2]
    assert report.unsent() is None


def test_flush_with_nothing_pending_emits_nothing(report: Progress, emitted: Recorder) -> None:
    report.flush()
    report(current=1)
    report.flush()
    assert emitted.currents == [1]


def test_update_carries_the_wall_clock_time_it_was_produced(report: Progress, emitted: Recorder) -> None:
    before = time.time()
    report(current=1)
    assert before <= emitted.updates[0].at <= time.time()


# --- cancel ----------------------------------------------------------------------


def test_next_call_after_request_cancel_raises_job_cancelled(report: Progress, emitted: Recorder) -> None:
    report(current=1)
    report.request_cancel()
    assert report.cancel_requested
    with pytest.raises(JobCancelled):
        report(current=2)
    assert emitted.currents == [1]


def test_call_after_emit_returned_true_raises_job_cancelled(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=1)
    emitted.cancel = True
    clock.now += 1
    report(current=2)  # this frame still goes out; the job learns of the cancel with it
    assert report.cancel_requested
    with pytest.raises(JobCancelled):
        report(current=3)
    assert emitted.currents == [1, 2]


def test_coalesced_calls_do_not_learn_of_a_cancel_from_emit(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=1)
    emitted.cancel = True
    report(current=2)  # coalesced: emit not called, so no cancel yet
    assert not report.cancel_requested


# --- rate and ETA ----------------------------------------------------------------


def test_steady_progress_gives_rate_and_eta(report: Progress, clock: Clock, emitted: Recorder) -> None:
    for step in range(11):
        clock.now = 1000.0 + step * 0.5
        report(current=step * 50, total=1000)  # 100 units per second
    last = emitted.updates[-1]
    assert last.current == 500
    assert last.rate == pytest.approx(100)
    assert last.eta_seconds == pytest.approx(5.0)


def test_first_update_has_no_rate(report: Progress, emitted: Recorder) -> None:
    report(current=5, total=10)
    assert (emitted.updates[0].rate, emitted.updates[0].eta_seconds) == (None, None)


def test_rate_without_current_is_none(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(message="starting")
    clock.now += 1
    report(message="still going")
    assert [(u.rate, u.eta_seconds) for u in emitted.updates] == [(None, None), (None, None)]


def test_unknown_total_gives_a_rate_but_no_eta(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=0)
    clock.now += 1
    report(current=30)
    assert (emitted.updates[-1].rate, emitted.updates[-1].eta_seconds) == (pytest.approx(30), None)


def test_eta_is_never_negative_past_the_total(report: Progress, clock: Clock, emitted: Recorder) -> None:
    report(current=0, total=10)
    clock.now += 1
    report(current=20, total=10)
    assert emitted.updates[-1].eta_seconds == 0


def test_rate_follows_the_last_window_only(report: Progress, clock: Clock, emitted: Recorder) -> None:
    slow = int(2 * RATE_WINDOW)  # 10 units/s for twice the window, then 100 units/s for one window
    for second in range(slow + int(RATE_WINDOW) + 1):
        clock.now = 1000.0 + second
        report(current=second * 10 if second <= slow else slow * 10 + (second - slow) * 100)
    assert emitted.updates[-1].rate == pytest.approx(100, rel=0.01)


def test_rate_history_resets_when_current_goes_back(report: Progress, clock: Clock, emitted: Recorder) -> None:
    for second, current in enumerate([0, 100, 200, 10, 60]):
        clock.now = 1000.0 + second
        report(current=current, total=1000)
    rates = [u.rate for u in emitted.updates]
    assert rates[2] == pytest.approx(100)
    assert rates[3] is None  # the old history means nothing after a restart
    assert rates[4] == pytest.approx(50)  # not (60 - 0) / 4 from the stale history


# --- result files ----------------------------------------------------------------


def test_result_path_is_inside_the_result_directory(tmp_path: Path, emitted: Recorder) -> None:
    report = Progress(emit=emitted, max_rate=10, result_dir=tmp_path / "job")
    path = report.result_path("out.csv")
    assert path == tmp_path / "job" / "out.csv"
    assert path.parent.is_dir()
    assert report.result_files == [path]


@pytest.mark.parametrize("name", ["../x", "../../etc/passwd", "/etc/passwd", "a/../../x", "sub/dir/x"])
def test_result_path_cannot_escape_its_directory(tmp_path: Path, emitted: Recorder, name: str) -> None:
    result_dir = tmp_path / "job"
    path = Progress(emit=emitted, max_rate=10, result_dir=result_dir).result_path(name)
    assert path.resolve().parent == result_dir.resolve()


def test_result_path_without_a_directory_raises(report: Progress) -> None:
    with pytest.raises(RuntimeError, match="no result directory"):
        report.result_path("x.csv")


def test_the_function_kinds_get_coalesces_and_cancels_like_the_reporter() -> None:
    clock = [0.0]
    sent: list[ProgressUpdate] = []

    def emit(update: ProgressUpdate) -> bool:
        sent.append(update)
        return False

    progress = Progress(emit=emit, max_rate=10, clock=lambda: clock[0])
    report = progress.as_function()
    report(current=1, total=10, message="one")
    report(current=2, total=10, message="two")  # inside the interval: kept, not sent
    clock[0] = 0.2
    report(current=3, total=10, message="three")
    assert [u.message for u in sent] == ["one", "three"]
    progress.request_cancel()
    with pytest.raises(JobCancelled):
        report(current=4, total=10)
