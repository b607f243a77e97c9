"""The kinds of the greetings app: jobstream imports this module at start-up because the
app is installed (JOBSTREAM_EXTRA_APPS=examples.greetings) and it is named `jobkinds.py`."""

from __future__ import annotations

import time
from typing import Any

from jobs.kinds import Param, Reporter, job_kind


@job_kind(
    name="greet",
    title="Greet people",
    params=(
        Param("people", "People", 1, 1000, default=5),
        Param("pause", "Seconds per greeting", 0, 2, default=0.2, integer=False),
    ),
    soft_time_limit=60 * 60,  # 1000 people x 2 s, with room to spare
)
def run_greet(report: Reporter, *, people: int, pause: float) -> dict[str, Any]:
    """Greets people one by one, a line in the log for each."""
    report(current=0, total=people, message="starting")
    for done in range(1, people + 1):
        time.sleep(pause)  # the real work
        report.log(f"hello, person {done}")
        report(current=done, total=people, message=f"greeted {done} of {people}")
    return {"greeted": people}
