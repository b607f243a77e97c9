"""Soak: hundreds of jobs, many watchers, Redis bounced once; every job must end (issue 5).

    .venv/bin/python bench/soak.py                 # 10 minutes
    .venv/bin/python bench/soak.py --minutes 2     # a shorter run

A throwaway stack (bench/stack.py: its own Redis, SQLite, one daphne, one worker with
a thread per job, Celery beat for the sweeper) takes a steady stream of mixed jobs from
a few anonymous visitors: short and long `sleep` jobs, some failing on purpose, some
cancelled while they run, `primes` and `report` jobs. Every job gets WATCHERS_PER_JOB
sockets on `/ws/jobs/<id>/`, and each visitor keeps an owner socket on `/ws/jobs/`.
Sockets behave as the page does: after any close but 1000 (after the terminal frame)
and 4404 they reconnect with backoff and jitter and take the snapshot again, and a
socket that hears nothing for RESYNC_SECONDS reconnects.

Halfway through, Redis is stopped and started again on the same port, losing
everything it held: queued task messages, pub/sub subscriptions, sessions' quota
entries. Jobs keep being submitted throughout (a submit while Redis is down must still
answer 201).

At the end submitting stops and the run waits (bounded) for every job to end. Figures:
jobs per final state, jobs not terminal (must be 0), watchers whose last frame is not
the job's true final state (must be 0), HTTP errors, time from Redis back to the first
job started after it, and daphne's and the worker's resident memory over time (flat:
the last third against the first third, after warm-up). A JSON line closes the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from bench.stack import Stack  # noqa: E402
from core.redis_local import redis_answers, start_redis  # noqa: E402

VISITORS = 4  # anonymous sessions submitting jobs
SUBMIT_EVERY = 1.0  # seconds between submissions (about 600 jobs in 10 minutes)
WATCHERS_PER_JOB = 5
CANCEL_SHARE = 0.05  # share of jobs cancelled while they run
RESYNC_SECONDS = 15.0  # a watcher that heard nothing for this long reconnects (as the page re-reads)
BOUNCE_DOWN_SECONDS = 3.0  # how long Redis stays down
DRAIN_TIMEOUT = 180.0  # after the last submit, seconds for every job to end
SAMPLE_EVERY = 5.0  # seconds between memory samples
TERMINAL = {"succeeded", "failed", "cancelled"}
STACK_ENV = {
    "JOB_HEARTBEAT_INTERVAL": "2",
    "JOB_STALE_AFTER": "10",
    "JOB_SWEEP_INTERVAL": "5",
    "JOB_REQUEUE_AFTER": "20",
}


@dataclass
class Watch:
    job_id: str
    last_state: str | None = None
    last_seq: int = 0
    connects: int = 0


@dataclass
class Figures:
    submitted: int = 0
    submit_errors: list[str] = field(default_factory=list)
    cancels: int = 0
    redis_down_at: float | None = None
    redis_back_at: float | None = None
    first_start_after_bounce: float | None = None
    rss: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"daphne0": [], "worker0": []})


def job_params(rng: random.Random) -> tuple[str, dict[str, Any]]:
    roll = rng.random()
    if roll < 0.55:
        return "sleep", {"steps": rng.randint(3, 30), "step_seconds": round(rng.uniform(0.05, 0.4), 2)}
    if roll < 0.65:
        steps = rng.randint(4, 20)
        return "sleep", {"steps": steps, "step_seconds": 0.1, "fail_at_step": rng.randint(1, steps)}
    if roll < 0.85:
        return "primes", {"limit": rng.randint(100_000, 3_000_000)}
    return "report", {"rows": rng.randint(1_000, 50_000)}


async def watch_job(ws_url: str, origin: str, cookie: str, watch: Watch, stop: asyncio.Event) -> None:
    """Follows one job as the page does until its terminal frame (or the run stops)."""
    attempt = 0
    while not stop.is_set():
        try:
            async with connect(
                f"{ws_url}/ws/jobs/{watch.job_id}/",
                origin=origin,  # type: ignore[arg-type]
                additional_headers={"Cookie": cookie},
                open_timeout=10,
                compression=None,
            ) as socket:
                watch.connects += 1
                attempt = 0
                while True:
                    try:
                        text = await asyncio.wait_for(socket.recv(), RESYNC_SECONDS)
                    except TimeoutError:
                        break  # heard nothing: reconnect for a fresh snapshot
                    frame = json.loads(text)
                    if frame.get("type") != "job":
                        continue
                    job = frame["job"]
                    if job["seq"] <= watch.last_seq:
                        continue  # older than what is shown: the client rule of docs/contract.md#job-state
                    watch.last_seq, watch.last_state = job["seq"], job["state"]
        except (ConnectionClosed, OSError, TimeoutError):
            pass
        except Exception:  # a refused handshake (InvalidStatus…) while Redis or daphne is away: retried
            pass
        if watch.last_state in TERMINAL:
            return
        attempt += 1
        await asyncio.sleep(min(10.0, 0.5 * 2 ** min(attempt, 5)) * random.uniform(0.5, 1.0))


async def sample_memory(stack: Stack, figures: Figures, stop: asyncio.Event, started: float) -> None:
    processes = {name: psutil.Process(pid) for name, pid in stack.pids().items() if name in figures.rss}
    while not stop.is_set():
        for name, process in processes.items():
            with contextlib.suppress(psutil.Error):
                figures.rss[name].append((time.monotonic() - started, process.memory_info().rss / 1e6))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)


async def bounce_redis(stack: Stack, figures: Figures, at: float, started: float) -> None:
    await asyncio.sleep(max(0.0, started + at - time.monotonic()))
    assert stack.redis is not None
    port = stack.redis.port
    print(f"[{time.monotonic() - started:6.1f} s] stopping Redis (port {port})", flush=True)
    figures.redis_down_at = time.monotonic() - started
    stack.redis.stop()
    await asyncio.sleep(BOUNCE_DOWN_SECONDS)
    stack.redis = start_redis(port)
    while not redis_answers(stack.redis.url):
        await asyncio.sleep(0.1)
    figures.redis_back_at = time.monotonic() - started
    print(f"[{figures.redis_back_at:6.1f} s] Redis is back", flush=True)


async def run(minutes: float, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    figures = Figures()
    duration = minutes * 60
    with Stack(daphnes=1, workers=1, worker_concurrency=16, beat=True, env=STACK_ENV) as stack:
        base, ws_url = stack.base_urls[0], stack.ws_urls[0]
        started = time.monotonic()
        stop = asyncio.Event()
        watches: list[Watch] = []
        watch_tasks: list[asyncio.Task[None]] = []
        cancel_tasks: list[asyncio.Task[None]] = []
        jobs: dict[str, dict[str, Any]] = {}  # id -> {"visitor": i, ...}
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            visitors: list[tuple[dict[str, str], str]] = []
            for _ in range(VISITORS):
                response = await http.get("/")
                cookies = dict(response.cookies)
                http.cookies.clear()
                visitors.append((cookies, cookies["csrftoken"]))
            memory = asyncio.create_task(sample_memory(stack, figures, stop, started))
            bounce = asyncio.create_task(bounce_redis(stack, figures, duration / 2, started))

            async def cancel_later(job_id: str, cookies: dict[str, str], csrf: str, delay: float) -> None:
                await asyncio.sleep(delay)
                try:
                    response = await http.post(
                        f"/api/jobs/{job_id}/cancel/", cookies=cookies, headers={"X-CSRFToken": csrf}
                    )
                    if response.status_code in (202, 409):
                        figures.cancels += response.status_code == 202
                except httpx.HTTPError:
                    pass

            next_submit = time.monotonic()
            while time.monotonic() - started < duration:
                visitor = rng.randrange(VISITORS)
                cookies, csrf = visitors[visitor]
                kind, params = job_params(rng)
                try:
                    response = await http.post(
                        "/api/jobs/",
                        json={"kind": kind, "params": params},
                        cookies=cookies,
                        headers={"X-CSRFToken": csrf},
                    )
                    if response.status_code != 201:
                        figures.submit_errors.append(f"{response.status_code} {response.text[:120]}")
                    else:
                        job = response.json()
                        jobs[job["id"]] = {
                            "visitor": visitor,
                            "kind": kind,
                            "fails_on_purpose": "fail_at_step" in params,
                        }
                        figures.submitted += 1
                        cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
                        for _ in range(WATCHERS_PER_JOB):
                            watch = Watch(job["id"])
                            watches.append(watch)
                            watch_tasks.append(asyncio.create_task(watch_job(ws_url, base, cookie, watch, stop)))
                        if rng.random() < CANCEL_SHARE:
                            cancel_tasks.append(
                                asyncio.create_task(cancel_later(job["id"], cookies, csrf, rng.uniform(0.5, 3.0)))
                            )
                except httpx.HTTPError as exc:
                    figures.submit_errors.append(repr(exc))
                next_submit += SUBMIT_EVERY
                await asyncio.sleep(max(0.0, next_submit - time.monotonic()))
                if len(figures.submit_errors) > 50:
                    break
            print(f"[{time.monotonic() - started:6.1f} s] submitted {figures.submitted}; draining", flush=True)
            await bounce

            # Wait for every job to end, bounded.
            deadline = time.monotonic() + DRAIN_TIMEOUT
            final: dict[str, dict[str, Any]] = {}
            while time.monotonic() < deadline:
                final = await fetch_all(http, visitors)
                if all(final.get(job_id, {}).get("state") in TERMINAL for job_id in jobs):
                    break
                await asyncio.sleep(2)
            drained_at = time.monotonic() - started
            # Watchers get their terminal frames; give them a moment, bounded.
            watch_deadline = time.monotonic() + 30
            while time.monotonic() < watch_deadline and not all(task.done() for task in watch_tasks):
                await asyncio.sleep(0.5)
            stop.set()
            for task in watch_tasks:
                task.cancel()
            await asyncio.gather(*watch_tasks, return_exceptions=True)
            await memory

        if figures.redis_back_at is not None:
            after = [
                job["started_at"]
                for job in final.values()
                if job.get("started_at") and _ts(job["started_at"]) > _wall(started, figures.redis_back_at)
            ]
            if after:
                first = min(_ts(value) for value in after)
                figures.first_start_after_bounce = round(first - _wall(started, figures.redis_back_at), 2)
        return summarize(figures, jobs, final, watches, drained_at, duration, stack)


_WALL_OFFSET = time.time() - time.monotonic()


def _wall(started: float, offset: float) -> float:
    return started + offset + _WALL_OFFSET


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value).timestamp()


async def fetch_all(http: httpx.AsyncClient, visitors: list[tuple[dict[str, str], str]]) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    for cookies, _ in visitors:
        page = 1
        while True:
            try:
                response = await http.get("/api/jobs/", params={"page": page, "page_size": 100}, cookies=cookies)
            except httpx.HTTPError:
                return jobs
            if response.status_code != 200:
                return jobs
            body = response.json()
            jobs.update({job["id"]: job for job in body["results"]})
            if not body["next"]:
                break
            page += 1
    return jobs


def _growth(samples: list[tuple[float, float]], warmup: float) -> tuple[float | None, float | None, float | None]:
    values = [rss for at, rss in samples if at >= warmup]
    if len(values) < 6:
        return None, None, None
    third = len(values) // 3
    first, last = statistics.median(values[:third]), statistics.median(values[-third:])
    return round(first, 1), round(last, 1), round(last - first, 1)


def summarize(
    figures: Figures,
    jobs: dict[str, dict[str, Any]],
    final: dict[str, dict[str, Any]],
    watches: list[Watch],
    drained_at: float,
    duration: float,
    stack: Stack,
) -> dict[str, Any]:
    states: dict[str, int] = {}
    for job_id in jobs:
        state = final.get(job_id, {}).get("state", "missing")
        states[state] = states.get(state, 0) + 1
    not_terminal = sum(count for state, count in states.items() if state not in TERMINAL)
    # A job fails only on purpose (`fail_at_step`): any other failure is a fault the
    # soak caused and the product did not survive (a lost worker, a crash).
    unexpected = [
        f"{job_id} ({jobs[job_id]['kind']}): {final[job_id].get('error')}"
        for job_id in jobs
        if final.get(job_id, {}).get("state") == "failed" and not jobs[job_id].get("fails_on_purpose")
    ]
    wrong_watchers = sum(
        1 for watch in watches if watch.last_state != final.get(watch.job_id, {}).get("state", "missing")
    )
    reconnected = sum(1 for watch in watches if watch.connects > 1)
    warmup = min(60.0, duration / 5)
    memory = {name: _growth(samples, warmup) for name, samples in figures.rss.items()}
    result = {
        "minutes": round(duration / 60, 1),
        "jobs_submitted": figures.submitted,
        "submit_errors": len(figures.submit_errors),
        "submit_error_samples": figures.submit_errors[:3],
        "cancels_accepted": figures.cancels,
        "final_states": states,
        "jobs_not_terminal": not_terminal,
        "failed_not_on_purpose": len(unexpected),
        "failed_not_on_purpose_samples": unexpected[:3],
        "watchers": len(watches),
        "watchers_not_on_final_state": wrong_watchers,
        "watchers_reconnected": reconnected,
        "redis_down_at_s": figures.redis_down_at,
        "redis_back_at_s": figures.redis_back_at,
        "first_job_started_after_redis_back_s": figures.first_start_after_bounce,
        "all_ended_at_s": round(drained_at, 1),
        "rss_mb_first_last_growth": memory,
    }
    print("\n== soak ==")
    print(f"jobs submitted {figures.submitted} ({len(figures.submit_errors)} submit errors), cancels {figures.cancels}")
    print(f"final states {states}; not terminal: {not_terminal}; failed not on purpose: {len(unexpected)}")
    for sample in unexpected[:3]:
        print(f"  {sample}")
    print(f"watchers {len(watches)}: not on the job's final state {wrong_watchers}; reconnected {reconnected}")
    print(
        f"Redis down at {figures.redis_down_at} s, back at {figures.redis_back_at} s; first job started after it "
        f"+{figures.first_start_after_bounce} s; every job ended by {drained_at:.0f} s"
    )
    for name, (first, last, growth) in memory.items():
        print(f"{name} RSS after warm-up: first third {first} MB, last third {last} MB, growth {growth} MB")
    print(json.dumps(result))
    if not_terminal or wrong_watchers or unexpected:
        logs = ROOT / "bench" / "results" / "soak-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in stack.processes:
            (logs / f"{name}.log").write_text(stack.log(name))
        print(f"the processes' logs are in {logs}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.minutes, args.seed))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result))
    failures = ("jobs_not_terminal", "watchers_not_on_final_state", "failed_not_on_purpose")
    return 1 if any(result[name] for name in failures) else 0


if __name__ == "__main__":
    sys.exit(main())
