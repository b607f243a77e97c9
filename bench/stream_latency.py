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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from core.redis_local import free_port, start_redis  # noqa: E402

STEPS = 200
STEP_SECONDS = 0.05  # 20 reports a second
# The reporter sends at most PROGRESS_MAX_RATE frames/s per job (default 10); 50 lets
# every one of the 20 reports a second through, so each step is one measured frame.
PROGRESS_MAX_RATE = "50"
START_TIMEOUT = 60.0  # seconds for daphne and the worker to answer /healthz
JOB_TIMEOUT = 120.0  # seconds for the whole job to stream
TERMINAL = {"succeeded", "failed", "cancelled"}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def stop(process: subprocess.Popen[bytes], name: str) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        print(f"{name} (pid {process.pid}) did not stop on SIGTERM; killing it", file=sys.stderr)
        process.kill()
        process.wait(timeout=5)


def wait_healthy(url: str, processes: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = ""
    while time.monotonic() < deadline:
        for name, process in processes.items():
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited at start; see the logs in {logs}")
        try:
            response = httpx.get(f"{url}/healthz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.2)  # polling a starting server, outside any event loop
    raise RuntimeError(f"/healthz did not answer 200 within {START_TIMEOUT:.0f} s: {last}")


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
    workdir = Path(tempfile.mkdtemp(prefix="jobstream-bench-"))
    redis = start_redis()
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        env = {
            **os.environ,
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "REDIS_URL": redis.url,
            "DEBUG": "true",
            "MEDIA_ROOT": str(workdir / "media"),
            "PROGRESS_MAX_RATE": PROGRESS_MAX_RATE,
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
        port = free_port()
        base_url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
        with (workdir / "daphne.log").open("wb") as out:
            processes["daphne"] = subprocess.Popen(
                [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "core.asgi:application"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        celery = Path(sys.executable).parent / "celery"
        with (workdir / "worker.log").open("wb") as out:
            processes["worker"] = subprocess.Popen(
                [str(celery), "-A", "celery_app", "worker", "-P", "threads", "-c", "4", "-E", "-l", "WARNING"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_healthy(base_url, processes, workdir)

        latencies, jobs = asyncio.run(asyncio.wait_for(follow_job(base_url, ws_url), JOB_TIMEOUT))
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
            f"worker PROGRESS_MAX_RATE={PROGRESS_MAX_RATE} (default 10/s would coalesce to 10 frames/s): "
            "every step is sent"
        )
        print(
            f"frames measured: {figures['frames']} ({progress_frames} progress), final state {figures['final_state']}"
        )
        print(
            f"latency worker report -> client receive: p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
            f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms ({figures['max_at']})"
        )
        print(json.dumps(figures))
        return 0
    finally:
        for name, process in reversed(processes.items()):
            stop(process, name)
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
