"""Multi-step kinds: one progress bar over several named steps.

    steps = Steps(report, [("generate", 1), ("transform", 3), ("summarize", 1)])
    with steps.step("generate") as step:
        for done in range(n):
            step(current=done, total=n, message=f"{done:,} of {n:,}")

Each step's own progress maps onto its share of one overall percent (`total=100`),
shares in proportion to the weights, and the message names the step:
"Step 2 of 3 · transform: 5,000 of 10,000". Steps run in the order declared, each
once, inside the one task that owns the job (see docs/job-kinds.md, "Multi-step
kinds", for why not a Celery chain).

Each step writes a log line when it starts and one when it ends (its time, and the
`figures` the body set: "drew 50,000 numbers"); a step that fails or is cancelled has
the run's own last line instead, the JobError's message naming the step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from jobs.exceptions import JobCancelled, JobError
from jobs.kinds import Reporter

PERCENT_DIGITS = 2  # 0.01 % steps: finer than any bar draws, coarse enough to read


class Step:
    """What the body of `with steps.step(name) as step:` reports through."""

    def __init__(self, steps: Steps, index: int) -> None:
        self._steps = steps
        self.index = index
        self.name = steps.names[index]
        self.fraction = 0.0  # of this step, from 0 to 1
        self.figures = ""  # what the step did, for its end line in the log ("drew 50,000 numbers")

    @property
    def label(self) -> str:
        return f"Step {self.index + 1} of {len(self._steps.names)} · {self.name}"

    def __call__(self, current: float | None = None, total: float | None = None, message: str = "") -> None:
        """Reports this step's progress; without a total the bar holds where it is."""
        if current is not None and total:
            self.fraction = min(1.0, max(0.0, current / total))
        self._steps.report_step(self, message)

    def log(self, text: object, level: str = "info") -> None:
        """A line in the job's log, the step named: "Step 2 of 3 · transform: <text>"."""
        self._steps.report.log("\n".join(f"{self.label}: {line}" for line in str(text).splitlines() or [""]), level)

    def result_path(self, filename: str) -> Path:
        return Path(self._steps.report.result_path(filename))


class Steps:
    """Named, weighted steps that share one reporter (see the module docstring)."""

    def __init__(self, report: Reporter, steps: Sequence[tuple[str, float]]) -> None:
        if not steps:
            raise ValueError("Steps needs at least one (name, weight) step.")
        names = [name for name, _ in steps]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"Step names must be unique; repeated: {', '.join(duplicates)}.")
        weights = [float(weight) for _, weight in steps]
        if any(not math.isfinite(weight) or weight <= 0 for weight in weights):
            raise ValueError(f"Step weights must be positive numbers; got {weights}.")
        self.report = report
        self.names = tuple(names)
        total = sum(weights)
        self._shares = [weight / total for weight in weights]
        self._starts = [sum(self._shares[:index]) for index in range(len(weights))]
        self._next = 0  # index of the step that may start next

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        """Runs one step: entered in the declared order, each once.

        A JobError inside fails the job with the step named in its message; any other
        exception keeps its traceback, with a note naming the step.
        """
        if name not in self.names:
            raise ValueError(f"Unknown step {name!r}; the steps are: {', '.join(self.names)}.")
        index = self.names.index(name)
        if index != self._next:
            expected = self.names[self._next] if self._next < len(self.names) else "none (all steps ran)"
            raise ValueError(f"Step {name!r} out of order: the next step is {expected}.")
        self._next += 1
        step = Step(self, index)
        started = time.monotonic()
        step(message="starting")
        step.log("started")
        try:
            yield step
        except JobCancelled:
            raise
        except JobError as exc:
            raise JobError(f"{step.label} failed: {exc}") from exc
        except Exception as exc:
            exc.add_note(f"in {step.label}")
            raise
        step.fraction = 1.0
        step(message="done")
        elapsed = f"{time.monotonic() - started:,.2f} s"
        step.log(f"done in {elapsed}: {step.figures}" if step.figures else f"done in {elapsed}")

    def percent(self, step: Step) -> float:
        return round(100 * (self._starts[step.index] + self._shares[step.index] * step.fraction), PERCENT_DIGITS)

    def report_step(self, step: Step, message: str) -> None:
        text = f"{step.label}: {message}" if message else step.label
        self.report(current=self.percent(step), total=100, message=text)
