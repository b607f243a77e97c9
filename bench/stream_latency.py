"""Delivery lag of progress frames, worker → Redis → daphne → WebSocket client.

Starts its own Redis (free port), a daphne and a Celery worker on a throwaway SQLite
database, submits one `sleep` job of 200 steps of 50 ms (20 reports a second), follows
it on `/ws/jobs/<id>/` and, for every frame after the first, takes
latency = client receive time - the frame's `job.updated_at` (the worker's
`time.time()` at report for progress frames; one machine, one clock).

    .venv/bin/python bench/stream_latency.py

Prints count, p50, p95, p99 and max in ms, then one JSON line. Everything it started
is stopped by its PID on the way out.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from bench.stack import Stack, percentile  # noqa: E402

STEPS = 200
STEP_SECONDS = 0.05  # 20 reports a second
# The reporter sends at most PROGRESS_MAX_RATE frames/s per job (default 10); 50 lets
# every one of the 20 reports a second through, so each step is one measured frame.
PROGRESS_MAX_RATE = "50"
START_TIMEOUT = 60.0  # seconds for daphne and the worker to answer /healthz
JOB_TIMEOUT = 120.0  # seconds for the whole job to stream
TERMINAL = {"succeeded", "failed", "cancelled"}


async def follow_job(base_url: str, ws_url: str) -> tuple[list[float], list[dict[str, Any]]]:
    """Submits the job and returns (latencies in ms, jobs received), first frame excluded."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        (await client.get("/")).raise_for_status()  # creates the session and the csrftoken
        response = await client.post(
            "/api/jobs/",
            json={"kind": "sleep", "params": {"steps": STEPS, "step_seconds": STEP_SECONDS}},
            headers={"X-CSRFToken": client.cookies["csrftoken"]},
        )
        response.raise_for_status()
        job_id = response.json()["id"]
        latencies: list[float] = []
        jobs: list[dict[str, Any]] = []
        async with connect(
            f"{ws_url}/ws/jobs/{job_id}/",
            origin=base_url,  # type: ignore[arg-type]
            additional_headers={"Cookie": f"sessionid={client.cookies['sessionid']}"},
        ) as socket:
            first = True
            async for text in socket:
                received = time.time()
                job = json.loads(text)["job"]
                if not first:  # the first frame is the state at connect, not a fresh change
                    produced = datetime.fromisoformat(job["updated_at"]).timestamp()
                    latencies.append((received - produced) * 1000)
                    jobs.append(job)
                first = False
                if job["state"] in TERMINAL:
                    break
        return latencies, jobs


def _describe(job: dict[str, Any]) -> str:
    current = job["progress"]["current"] if job["progress"] else None
    return f"seq {job['seq']}, {job['state']}, progress {current}"


def main() -> int:
    with Stack(env={"PROGRESS_MAX_RATE": PROGRESS_MAX_RATE}, worker_concurrency=4) as stack:
        latencies, jobs = asyncio.run(asyncio.wait_for(follow_job(stack.base_urls[0], stack.ws_urls[0]), JOB_TIMEOUT))
    progress_frames = sum(1 for job in jobs if job["state"] == "running" and job["progress"] is not None)
    figures = {
        "frames": len(latencies),
        "progress_frames": progress_frames,
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(percentile(latencies, 0.95), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "max_ms": round(max(latencies), 2),
        "max_at": _describe(jobs[latencies.index(max(latencies))]),
        "steps": STEPS,
        "step_seconds": STEP_SECONDS,
        "progress_max_rate": float(PROGRESS_MAX_RATE),
        "final_state": jobs[-1]["state"] if jobs else None,
    }
    print(f"job: sleep, {STEPS} steps x {STEP_SECONDS * 1000:.0f} ms ({1 / STEP_SECONDS:.0f} reports/s)")
    print(
        f"worker PROGRESS_MAX_RATE={PROGRESS_MAX_RATE} (default 10/s would coalesce to 10 frames/s): every step is sent"
    )
    print(f"frames measured: {figures['frames']} ({progress_frames} progress), final state {figures['final_state']}")
    print(
        f"latency worker report -> client receive: p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
        f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms ({figures['max_at']})"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
