"""jobstream's streams beside the alternatives, in one run, on one machine, under one load.

    .venv/bin/python bench/alternatives/compare.py            # 1000 watchers / 100 jobs @ 10 Hz, 10,000 idle sockets
    .venv/bin/python bench/alternatives/compare.py --quick    # 100 / 10 @ 10 Hz, 500 idle: a smoke
    .venv/bin/python bench/alternatives/compare.py --only daphne,node --parts fanout

The alternatives:
  daphne    jobstream as it ships: Channels consumers on daphne, the pub/sub layer
  node      a Node.js side-car (bench/alternatives/node/server.js: ws, @redis/client):
            the same sockets and frames, fed from the Redis channels the workers publish
            on; Django (daphne, HTTP only) answers its owner check and snapshots
  gunicorn  a threaded WSGI server holding event streams: gunicorn gthread, 1 worker x
            32 threads (bench/capacity.py's), serving bench/alternatives/wsgi_job_events.py
  uwsgi     the same WSGI app on uWSGI's gevent loop (a greenlet per stream), uWSGI
            built from PyPI (bench/alternatives/uwsgi_env.py); skipped, saying why, when
            it does not build

The parts:
  fanout  bench/fanout.py's run (workers publish for real, the same ticker jobs, the same
          analysis), the watchers on the alternative: WebSockets for daphne and node,
          event streams (bench/alternatives/sse_clients.py) for gunicorn and uwsgi, whose
          jobs wait SSE_CONNECT_BUDGET for streams a full thread pool never serves
  idle    daphne, node: bench/capacity.py's idle owner sockets (snapshot, hold, an answer
          from each, the owner's job frame); gunicorn, uwsgi: idle event streams on queued
          jobs, held as long (no client frames on a one-way stream). Memory per socket =
          the server's RSS after the hold minus before, over the sockets held.

Lost frames count every window frame of every watcher, all of whom asked before the jobs
started: a stream a thread pool served only once its job had ended lost all of them
(bench/fanout.py alone expects of a late socket only what followed its first frame).

Server CPU is the serving process's (daphne; node; gunicorn's worker; uWSGI's one
process); for node, Django's CPU for its snapshots is shown beside. Prints one markdown
table and writes every figure to --out (default bench/results/alternatives.json).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psutil  # noqa: E402

from bench import capacity, fanout  # noqa: E402
from bench.alternatives.sidecar import NodeSidecar, SidecarUnavailable, ensure_installed  # noqa: E402
from bench.alternatives.sse_clients import SseClientProcess  # noqa: E402
from bench.alternatives.uwsgi_env import UwsgiUnavailable, ensure_uwsgi  # noqa: E402
from bench.stack import Stack, new_session, percentile, stop_process, submit_job  # noqa: E402
from bench.ws_clients import ClientPlan, new_stop_event  # noqa: E402
from core.redis_local import free_port  # noqa: E402

ALTERNATIVES = ("daphne", "node", "gunicorn", "uwsgi")
PARTS = ("fanout", "idle")
FANOUT = fanout.Scenario("1000w/100j@10Hz", 1000, 100, 10, 5)
QUICK_FANOUT = fanout.Scenario("100w/10j@10Hz", 100, 10, 10, 5)
IDLE_SOCKETS = 10_000
QUICK_IDLE_SOCKETS = 500
IDLE_HOLD_SECONDS = capacity.FULL_HOLD_SECONDS
QUICK_IDLE_HOLD_SECONDS = capacity.QUICK_HOLD_SECONDS
SIDECAR_ASGI = "bench.alternatives.sidecar_asgi:application"  # bench.asgi plus the side-car's owner endpoint
WSGI_APP = "bench.alternatives.wsgi_job_events:application"
# Seconds the jobs wait for every event stream's first event: a thread-per-request server
# never serves the streams past its threads while the served ones wait for their jobs.
SSE_CONNECT_BUDGET = 15.0
IDLE_JOBS = 10  # queued jobs the idle event streams are spread over
IDLE_CLIENT_PROCESSES = 4
IDLE_CONNECT_BUDGET = 120.0  # seconds for every idle stream to get its first event (or never)
QUICK_IDLE_CONNECT_BUDGET = 15.0
ACTIVE_TIMEOUT = 5.0  # seconds for /sse/active, which a server with every thread held never answers
UWSGI_GREENLETS_SPARE = 100  # async cores above the streams asked for (the HTTP calls of the run)
SERVER_START_TIMEOUT = 30.0
DEFAULT_OUT = ROOT / "bench" / "results" / "alternatives.json"


# --- servers ------------------------------------------------------------------------------------


@contextlib.contextmanager
def node_sidecar(stack: Stack) -> Iterator[NodeSidecar]:
    assert stack.redis is not None
    with NodeSidecar(
        django_url=stack.base_urls[0], redis_url=stack.redis.url, log=stack.workdir / "node.log"
    ) as sidecar:
        yield sidecar


def _wait_http(url: str, process: subprocess.Popen[bytes], name: str, stack: Stack) -> None:
    deadline = time.monotonic() + SERVER_START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited at start with {process.returncode}:\n{stack.log(name)[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not answer within {SERVER_START_TIMEOUT:.0f} s:\n{stack.log(name)[-3000:]}")
        time.sleep(0.1)  # a starting process, outside any event loop


def _wsgi_env(stack: Stack) -> dict[str, str]:
    return {**stack.env, "DJANGO_SETTINGS_MODULE": "core.settings"}


@contextlib.contextmanager
def gunicorn_server(stack: Stack, connections: int) -> Iterator[tuple[str, int]]:
    """gunicorn gthread, 1 worker x capacity.GUNICORN_THREADS; (base URL, the worker's pid)."""
    port = free_port()
    command = [
        sys.executable, "-m", "gunicorn", WSGI_APP,
        "--bind", f"127.0.0.1:{port}", "--worker-class", "gthread", "--workers", "1",
        "--threads", str(capacity.GUNICORN_THREADS),
        "--worker-connections", str(max(capacity.GUNICORN_WORKER_CONNECTIONS, connections + 100)),
        "--keep-alive", str(capacity.GUNICORN_KEEPALIVE), "--log-level", "warning",
        "--graceful-timeout", "1",  # held streams would keep a stopping worker for its default 30 s
    ]  # fmt: skip
    process = stack.spawn("gunicorn", command, env=_wsgi_env(stack))
    try:
        _wait_http(f"http://127.0.0.1:{port}/sse/active", process, "gunicorn", stack)
        workers = psutil.Process(process.pid).children()
        if len(workers) != 1:
            raise RuntimeError(f"gunicorn has {len(workers)} workers, expected 1")
        yield f"http://127.0.0.1:{port}", workers[0].pid
    finally:
        stop_process(process, "gunicorn")


@contextlib.contextmanager
def uwsgi_server(stack: Stack, connections: int) -> Iterator[tuple[str, int]]:
    """uWSGI, one process, gevent loop with a greenlet per request; (base URL, its pid)."""
    uwsgi = ensure_uwsgi()
    port = free_port()
    command = [
        str(uwsgi.binary), "--http-socket", f"127.0.0.1:{port}",
        "--module", WSGI_APP, "--chdir", str(ROOT),
        "--virtualenv", str(Path(sys.prefix)), "--pythonpath", str(uwsgi.site_packages),
        "--processes", "1", "--gevent", str(connections + UWSGI_GREENLETS_SPARE), "--gevent-early-monkey-patch",
        "--listen", "1024", "--max-fd", str(connections + 2000), "--disable-logging", "--die-on-term",
    ]  # fmt: skip
    process = stack.spawn("uwsgi", command, env=_wsgi_env(stack))
    try:
        _wait_http(f"http://127.0.0.1:{port}/sse/active", process, "uwsgi", stack)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        stop_process(process, "uwsgi")


WSGI_SERVERS = {"gunicorn": gunicorn_server, "uwsgi": uwsgi_server}


# --- fan-out -------------------------------------------------------------------------------------


def _fronts(name: str, watchers: int) -> tuple[str, fanout.FrontFactory]:
    """(ASGI application of the stack's daphne, the front) of an alternative."""
    if name == "daphne":
        return fanout.BENCH_ASGI, fanout.daphne_front

    if name == "node":

        @contextlib.contextmanager
        def node_front(stack: Stack) -> Iterator[fanout.Front]:
            with node_sidecar(stack) as sidecar:
                yield fanout.Front("node", sidecar.ws_url, [sidecar.pid], others={"django": [stack.pids()["daphne0"]]})

        return SIDECAR_ASGI, node_front

    serve = WSGI_SERVERS[name]

    @contextlib.contextmanager
    def wsgi_front(stack: Stack) -> Iterator[fanout.Front]:
        with serve(stack, watchers) as (base_url, pid):
            yield fanout.Front(name, base_url, [pid], client=SseClientProcess, connect_budget=SSE_CONNECT_BUDGET)

    return fanout.BENCH_ASGI, wsgi_front


def run_fanout(name: str, scenario: fanout.Scenario) -> dict[str, Any]:
    asgi, front = _fronts(name, scenario.watchers)
    figures = fanout.run_once(scenario, "ours", warmup=fanout.WARMUP, asgi=asgi, front=front)
    figures.pop("latencies_ms", None)
    figures.pop("p99_ms_by_tick", None)
    opened = figures["watchers"] - figures["failed_sockets"]
    served = figures["phases"]["connect"]["frames"]  # first frames received while the jobs waited
    # bench/fanout.py expects of a socket only the frames after its first one, fair to a
    # socket opened late; here every watcher asked before the jobs started, so a stream
    # a full thread pool served only at its job's end lost every frame before it.
    window_ticks = figures["reports_per_job"] - figures["warmup_ticks"]
    per_job = scenario.watchers / scenario.jobs
    expected_all = round((window_ticks * scenario.jobs - figures["reporter_coalesced"]) * per_job)
    lost_all = expected_all - figures["frames_delivered"]
    return {
        "alternative": name,
        **figures,
        "sockets_opened": opened,
        "sockets_served_at_connect": served,
        "frames_expected_all": expected_all,
        "frames_lost_all": lost_all,
        "lost_all_pct": round(100 * lost_all / expected_all, 3) if expected_all else None,
        "server_us_per_frame": figures["daphne_us_per_frame"],
        "clients_us_per_frame": (
            round(figures["clients_cpu_s"] * 1e6 / figures["frames_sent"], 1) if figures["frames_sent"] else None
        ),
    }


# --- idle sockets ---------------------------------------------------------------------------------


def run_idle(name: str, sockets: int, hold: float, budget: float) -> dict[str, Any]:
    if name == "daphne":
        result = capacity.run_sockets(sockets, hold, {})
    elif name == "node":

        @contextlib.contextmanager
        def sidecar_server(stack: Stack) -> Iterator[tuple[str, int]]:
            with node_sidecar(stack) as sidecar:
                yield sidecar.ws_url, sidecar.pid

        result = capacity.run_sockets(sockets, hold, {}, asgi=SIDECAR_ASGI, server=sidecar_server)
    else:
        return {"alternative": name, **run_idle_streams(name, sockets, hold, budget)}
    held = min(result["sockets_connected"], result["sockets_answering"])
    return {"alternative": name, "kind": "WebSocket /ws/jobs/", **result, "sockets_held": held}


def _active_streams(base_url: str) -> int | None:
    """The streams the server says it serves, or None when it cannot answer (every thread held)."""
    try:
        active: int = httpx.get(f"{base_url}/sse/active", timeout=ACTIVE_TIMEOUT).json()["active"]
    except httpx.HTTPError:
        return None
    return active


def run_idle_streams(name: str, streams: int, hold: float, budget: float) -> dict[str, Any]:
    """`streams` event streams on queued jobs, held `hold` seconds: how many got their first
    event within `budget` seconds, how many were still open at the end, and the server's
    memory for them."""
    capacity.raise_fd_limit()
    with Stack(daphnes=1, workers=0) as stack, WSGI_SERVERS[name](stack, streams) as (base_url, pid):
        server = psutil.Process(pid)
        jar, csrf = new_session(stack.base_urls[0])
        jobs = [
            submit_job(stack.base_urls[0], jar, csrf, "sleep", {"steps": 1, "step_seconds": 0})
            for _ in range(IDLE_JOBS)
        ]
        cookie = "; ".join(f"{k}={v}" for k, v in jar.items())
        warm = httpx.get(
            f"{base_url}/api/jobs/{jobs[0]}/", cookies=jar, timeout=10
        )  # imports and pools in the baseline
        warm.raise_for_status()
        rss_before = server.memory_info().rss
        cpu_before = sum(server.cpu_times()[:2])
        stop = new_stop_event()
        clients = [SseClientProcess(stop) for _ in range(IDLE_CLIENT_PROCESSES)]
        started = time.time()
        try:
            for client in clients:
                client.wait_ready()
            job_ids = [jobs[index % len(jobs)] for index in range(streams)]
            deadline = started + budget + hold + 60
            for index, client in enumerate(clients):
                plan = ClientPlan(base_url, stack.base_urls[0], cookie, job_ids[index::IDLE_CLIENT_PROCESSES], deadline)
                client.start(plan)
            while not all(client.poll_opened() for client in clients) and time.time() < started + budget:
                time.sleep(0.1)
            connected_at = time.time()
            cpu_connected = sum(server.cpu_times()[:2])
            time.sleep(hold)  # the point: streams sit idle
            rss_held = server.memory_info().rss
            cpu_held = sum(server.cpu_times()[:2])
            held_until = time.time()
            active = _active_streams(base_url)
            stop.set()
            for client in clients:
                if not client.poll_result(60):
                    raise RuntimeError(f"client process {client.process.pid} handed back no results")
        finally:
            stop.set()
            for client in clients:
                client.kill()
    watchers = [w for client in clients if client.result for w in client.result.watchers]
    first = [w.connected_at - started for w in watchers if w.connected_at is not None]
    held = sum(1 for w in watchers if w.frames and (w.closed_at is None or w.closed_at >= held_until))
    return {
        "kind": "SSE /sse/jobs/<id>/",
        "sockets_requested": streams,
        "sockets_connected": len(first),
        "sockets_held": held,
        "server_active_streams": active,
        "connect_seconds": round(connected_at - started, 2),
        "first_event_p50_ms": round(percentile(first, 0.5) * 1000, 1) if first else None,
        "first_event_p99_ms": round(percentile(first, 0.99) * 1000, 1) if first else None,
        "daphne_cpu_ms_per_connect": round((cpu_connected - cpu_before) * 1000 / max(len(first), 1), 2),
        "daphne_idle_cpu_percent": round((cpu_held - cpu_connected) * 100 / hold, 1),
        "hold_seconds": hold,
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_held_mb": round(rss_held / 2**20, 1),
        "kb_per_socket": round((rss_held - rss_before) / 1024 / max(held, 1), 1),
        "errors": sorted({w.error for w in watchers if w.error})[:5],
    }


# --- output ------------------------------------------------------------------------------------------


def _cell(value: object, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value}{suffix}"


def table(results: dict[str, dict[str, Any]]) -> str:
    """The one markdown table: a row per alternative."""
    lines = [
        "| alternative | idle sockets held | KB per socket | fan-out sockets served | server µs per frame "
        "(clients µs) | p50 ms | p99 ms | lost frames |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, parts in results.items():
        idle, fan = parts.get("idle"), parts.get("fanout")
        if "skipped" in parts:
            lines.append(f"| {name} | skipped: {parts['skipped'].splitlines()[0]} |  |  |  |  |  |  |")
            continue
        held = f"{idle['sockets_held']:,} / {idle['sockets_requested']:,}" if idle else "-"
        kb = _cell(idle["kb_per_socket"]) if idle else "-"
        if fan:
            served = f"{fan['sockets_served_at_connect']:,} / {fan['watchers']:,}"
            cpu = f"{_cell(fan['server_us_per_frame'])} ({_cell(fan['clients_us_per_frame'])})"
            lost = f"{fan['frames_lost_all']:,} / {fan['frames_expected_all']:,} ({_cell(fan['lost_all_pct'], ' %')})"
            p50, p99 = _cell(fan["p50_ms"]), _cell(fan["p99_ms"])
        else:
            served = cpu = lost = p50 = p99 = "-"
        lines.append(f"| {name} | {held} | {kb} | {served} | {cpu} | {p50} | {p99} | {lost} |")
    return "\n".join(lines)


def _availability(name: str) -> str | None:
    """Why an alternative cannot run here, or None."""
    try:
        if name == "node":
            ensure_installed()
        elif name == "uwsgi":
            ensure_uwsgi()
    except (SidecarUnavailable, UwsgiUnavailable) as exc:
        return str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 watchers / 10 jobs, 500 idle sockets")
    parser.add_argument("--only", default=",".join(ALTERNATIVES), help="comma-separated alternatives")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: fanout, idle")
    parser.add_argument("--sockets", type=int, help="idle sockets (default 10,000; 500 with --quick)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    for value, allowed, what in ((names, ALTERNATIVES, "alternative"), (parts, PARTS, "part")):
        unknown = set(value) - set(allowed)
        if unknown:
            parser.error(f"unknown {what}(s) {', '.join(sorted(unknown))}: choose from {', '.join(allowed)}")

    fanout.raise_fd_limit()  # every server started inherits it: thousands of sockets
    scenario = QUICK_FANOUT if args.quick else FANOUT
    if args.quick:
        scenario = replace(scenario, seconds=3)
    sockets = args.sockets or (QUICK_IDLE_SOCKETS if args.quick else IDLE_SOCKETS)
    hold = QUICK_IDLE_HOLD_SECONDS if args.quick else IDLE_HOLD_SECONDS
    started = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        why = _availability(name)
        if why is not None:
            print(f"== {name}: skipped: {why}")
            results[name] = {"skipped": why}
            continue
        results[name] = {}
        if "fanout" in parts:
            print(f"== {name}: fan-out {scenario.name}")
            figures = run_fanout(name, scenario)
            fanout.print_run(figures)
            results[name]["fanout"] = figures
        if "idle" in parts:
            print(f"== {name}: {sockets:,} idle sockets")
            idle = run_idle(name, sockets, hold, QUICK_IDLE_CONNECT_BUDGET if args.quick else IDLE_CONNECT_BUDGET)
            print(json.dumps({k: v for k, v in idle.items() if k not in ("check_errors",)}))
            results[name]["idle"] = idle
    print()
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    body = {
        "bench": "alternatives",
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "scenario": scenario.name,
        "idle_sockets": sockets,
        "results": results,
        "table": table(results),
    }
    args.out.write_text(json.dumps(body, indent=2) + "\n")
    print(f"\nfigures in {args.out}; total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
