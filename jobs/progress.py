"""The reporter a job kind calls: `report(current=..., total=..., message=...)`.

It coalesces: at most PROGRESS_MAX_RATE frames per second per job leave it. The first
call goes out at once; a call inside the interval only records the newest values
(a few attribute writes and a clock read) and the next call past the
interval sends them; `flush()` sends what is left before the job's terminal state,
so the last progress is never lost. `rate` and `eta_seconds` come from the frames sent
over the last RATE_WINDOW seconds.

With a `result_check`, each frame sent also hands it the bytes the job's result files
hold so far: it raises (the owner's storage quota, jobs/storage_quota.py) to stop the
job, from inside the kind's `report()` call.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from jobs.exceptions import JobCancelled
from jobs.logs import level_checked

RATE_WINDOW = 10.0  # seconds of history behind `rate`: long enough to smooth, short enough to follow
RATE_SAMPLES = 32  # bounded history, so a long job does not grow memory


@dataclass(frozen=True)
class ProgressUpdate:
    current: float | None
    total: float | None
    message: str
    rate: float | None
    eta_seconds: float | None
    at: float  # time.time() when the worker produced it


# Emits one update; returns True when a cancel has been asked for the job.
Emit = Callable[[ProgressUpdate], bool]
# Takes one `report.log(text, level)` call (jobs/log_writer.py); a bad level raises ValueError.
LogSink = Callable[[object, str], None]


def _log_nowhere(text: object, level: str = "info") -> None:
    level_checked(level)


class Progress:
    __slots__ = (
        "_cancelled",
        "_clock",
        "_current",
        "_emit",
        "_interval",
        "_log",
        "_message",
        "_next_at",
        "_pending",
        "_report",
        "_result_check",
        "_result_dir",
        "_samples",
        "_total",
        "result_files",
    )

    def __init__(
        self,
        *,
        emit: Emit,
        max_rate: float,
        result_dir: Path | None = None,
        result_check: Callable[[int], None] | None = None,
        log: LogSink | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._log = log or _log_nowhere
        self._interval = 1.0 / max_rate if max_rate > 0 else 0.0
        self._clock = clock
        self._next_at = float("-inf")
        self._pending = False
        self._cancelled = False
        self._current: float | None = None
        self._total: float | None = None
        self._message = ""
        self._samples: deque[tuple[float, float]] = deque(maxlen=RATE_SAMPLES)
        self._result_dir = result_dir
        self._result_check = result_check
        self.result_files: list[Path] = []
        self._report = self.as_function()

    def __call__(self, current: float | None = None, total: float | None = None, message: str = "") -> None:
        self._report(current=current, total=total, message=message)

    def as_function(self) -> Callable[..., None]:
        """What a kind is handed: a plain function doing what `__call__` does.

        On CPython 3.11 calling an instance with keywords goes through the type's
        `__call__` slot, dearer than a plain function call, and a coalesced report is
        little more than its call, so kinds get the function.
        """
        clock = self._clock

        def report(current: float | None = None, total: float | None = None, message: str = "") -> None:
            if self._cancelled:
                raise JobCancelled()
            self._current = current
            self._total = total
            self._message = message
            now = clock()
            if now < self._next_at:
                self._pending = True
                return
            self._send(now)

        report.result_path = self.result_path  # type: ignore[attr-defined]
        report.log = self.log  # type: ignore[attr-defined]
        return report

    def log(self, text: object, level: str = "info") -> None:
        """Writes a line (or one per line of `text`) to the job's log (jobs/log_writer.py)."""
        self._log(text, level)

    def flush(self) -> None:
        """Sends the newest coalesced values, if any are still unsent."""
        if self._pending:
            self._send(self._clock())

    def request_cancel(self) -> None:
        """Called from another thread: the next `report()` call raises JobCancelled."""
        self._cancelled = True

    @property
    def cancel_requested(self) -> bool:
        return self._cancelled

    def result_path(self, filename: str) -> Path:
        """A path where the kind writes its result file (one per job, kept by the job)."""
        if self._result_dir is None:
            raise RuntimeError("This reporter has no result directory.")
        name = Path(filename).name  # a kind cannot escape its own directory
        self._result_dir.mkdir(parents=True, exist_ok=True)
        path = self._result_dir / name
        self.result_files.append(path)
        return path

    def result_bytes(self) -> int:
        """What the job's result files hold on disk now."""
        total = 0
        for path in self.result_files:
            with contextlib.suppress(FileNotFoundError):  # named, not written (yet)
                total += path.stat().st_size  # one stat a file: this runs with every frame sent
        return total

    def check_result_size(self) -> None:
        """Hands `result_check` the bytes the result files hold; it raises to stop the job."""
        if self._result_check is not None and self.result_files:
            self._result_check(self.result_bytes())

    def unsent(self) -> ProgressUpdate | None:
        """The newest coalesced values not sent yet, for the job's terminal write."""
        if not self._pending:
            return None
        self._pending = False
        return self._update(self._clock())

    def _send(self, now: float) -> None:
        self._pending = False
        self._next_at = now + self._interval
        if self._emit(self._update(now)):
            self._cancelled = True
        self.check_result_size()  # at most max_rate stats a second, not one per call

    def _update(self, now: float) -> ProgressUpdate:
        rate, eta = self._rate_and_eta(now)
        return ProgressUpdate(
            current=self._current,
            total=self._total,
            message=self._message[:500],
            rate=rate,
            eta_seconds=eta,
            at=time.time(),
        )

    def _rate_and_eta(self, now: float) -> tuple[float | None, float | None]:
        current = self._current
        if current is None:
            return None, None
        samples = self._samples
        if samples and current < samples[-1][1]:
            samples.clear()  # progress went back (a restart): old history means nothing
        samples.append((now, current))
        while len(samples) > 2 and now - samples[0][0] > RATE_WINDOW:
            samples.popleft()
        first_t, first_c = samples[0]
        elapsed = now - first_t
        if elapsed <= 0:
            return None, None
        rate = (current - first_c) / elapsed
        eta = None
        if self._total is not None and rate > 0:
            eta = max(self._total - current, 0.0) / rate
        return rate, eta
