"""Turns bench/results/*.json into the tables of docs/performance.md and its plots.

    .venv/bin/python bench/report.py [--results bench/results] [--doc docs/performance.md]

Only the part of the document between the `bench:begin` and `bench:end` markers is
rewritten; the analysis around it is written by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def wall_over(run: dict[str, Any]) -> str:
    if run.get("wall_over_pct") is None:
        return "not finished by the deadline" if run.get("timed_out") else "n/a"
    return f"{fmt(run['wall_over_pct'])} %"


SHAPES = {
    "spread": "spread load: job i ticks i/jobs of an interval after job 0, as independent jobs do",
    "lockstep": "lockstep load (`bench/fanout.py --aligned`): every job ticks at the same instant, "
    "on the clock's grid, as a batch of identical jobs does",
}


def shape(run: dict[str, Any]) -> str:
    return str(run.get("shape") or ("lockstep" if run.get("aligned") else "spread"))


def panel(run: dict[str, Any]) -> str:
    """A plot's panel: the scenario, and the load shape when it is not the usual one."""
    return run["scenario"] + (" lockstep" if shape(run) == "lockstep" else "")


def fanout_section(runs: list[dict[str, Any]], img: Path) -> list[str]:
    lines = [
        "### Fan-out latency: worker report → websockets client",
        "",
        "Latency, p50 to max and lost count the measured ticks only (each job's first second of ticks is warm-up). "
        "CPU seconds and frames sent are counted over the whole window, from the worker's start to the last "
        "socket's close, job starts, terminal frames and every socket's close included: frames sent are all "
        "the frames the clients received in it (running frames, every tick, terminal frames), and daphne µs "
        "per frame is daphne's CPU over them. The clients are the watcher processes (`bench/ws_clients.py`) "
        "on the same two cores.",
        "",
    ]
    for load in SHAPES:
        shaped = [run for run in runs if shape(run) == load]
        if not shaped:
            continue
        lines += [
            f"#### {SHAPES[load][0].upper()}{SHAPES[load][1:]}",
            "",
            "| scenario | mode | frames expected | delivered | coalesced or lost | p50 ms | p95 ms | p99 ms | max ms "
            "| wall over nominal | daphne CPU s | worker CPU s | clients CPU s | frames sent | daphne µs per frame |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for run in shaped:
            lines.append(
                f"| {run['scenario']} | {run['mode']} "
                f"| {fmt(run['frames_expected'])} | {fmt(run['frames_delivered'])} "
                f"| {fmt(run['frames_lost'])} ({fmt(run['lost_pct'])} %) | {fmt(run['p50_ms'])} "
                f"| {fmt(run['p95_ms'])} | {fmt(run['p99_ms'])} | {fmt(run['max_ms'])} | {wall_over(run)} "
                f"| {fmt(run['daphne_cpu_s'])} | {fmt(run['worker_cpu_s'])} | {fmt(run.get('clients_cpu_s'))} "
                f"| {fmt(run.get('frames_sent'))} | {fmt(run.get('daphne_us_per_frame'))} |"
            )
        ratios = []
        for scenario in dict.fromkeys(run["scenario"] for run in shaped):
            pair = {run["mode"]: run for run in shaped if run["scenario"] == scenario}
            if {"ours", "naive"} <= set(pair) and pair["ours"].get("p99_ms") and pair["naive"].get("p99_ms"):
                ratio = pair["ours"]["p99_ms"] / pair["naive"]["p99_ms"]
                ratios.append(f"- {scenario}, {load}: p99 ours / naive = {ratio:.2f}")
        lines += ["", *ratios, ""]
    lines += _target_check(runs)
    lines += ["", "![fan-out latency, ours vs naive](img/fanout-latency.png)", ""]
    lines += ["![p99 latency by tick, ours vs naive](img/fanout-over-time.png)", ""]
    _plot_fanout(runs, img / "fanout-latency.png")
    _plot_over_time(runs, img / "fanout-over-time.png")
    return lines


PHASE_NOTES = {
    "connect": "the sockets open and get their snapshot, the jobs queued with no worker yet (before the window)",
    "boot": "the worker's process starts, imports and connects; no frame yet",
    "start": "jobs starting (each one's start transaction and running frame) while the first ones tick, "
    "until every job's first tick has reached its last socket",
    "steady": "ticks only, until the first terminal change",
    "ends": "terminal frames, the last ticks of jobs still running, and every socket's close, "
    "until the last socket closed",
    "window": "boot to ends: the window of the fan-out table's CPU and frames",
}


def phases_section(runs: list[dict[str, Any]]) -> list[str]:
    """Per load shape, the phases of the target scenario's runs, ours and naive row by row."""
    lines = [
        f"### Where the time goes, per phase ({TARGET_SCENARIO})",
        "",
        "Each run is cut at moments the clients observe (`bench/phases.py`): CPU is psutil's `cpu_times` of "
        "each process sampled every 50 ms and interpolated at the cuts; frames are those the clients received "
        "in the phase, with their latency (receive time minus the frame's `updated_at`, warm-up ticks, running and "
        "terminal frames included, so the p99 here is not the table's).",
        "",
        *(f"- **{name}**: {note}" for name, note in PHASE_NOTES.items()),
        "",
    ]
    for load in SHAPES:
        pair = {run["mode"]: run for run in runs if run["scenario"] == TARGET_SCENARIO and shape(run) == load}
        pair = {mode: run for mode, run in pair.items() if run.get("phases")}
        if not pair:
            continue
        lines += [
            f"#### {TARGET_SCENARIO}, {SHAPES[load]}",
            "",
            "| phase | mode | from s | seconds | daphne CPU s | worker CPU s | clients CPU s | frames "
            "| daphne µs per frame | closes | p50 ms | p99 ms | max ms |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        names = [row["phase"] for row in next(iter(pair.values()))["phases"]["rows"]]
        for name in ["connect", *names]:
            for mode, run in pair.items():
                rows = {row["phase"]: row for row in [run["phases"]["connect"], *run["phases"]["rows"]]}
                row = rows.get(name)
                if row is None:
                    continue
                cpu = row["cpu_s"]
                label = f"**{name}**" if name == "window" else name
                lines.append(
                    f"| {label} | {mode} | {fmt(row['from_s'], 2)} | {fmt(row['seconds'], 2)} "
                    f"| {fmt(cpu.get('daphne'), 2)} | {fmt(cpu.get('worker'), 2)} | {fmt(cpu.get('clients'), 2)} "
                    f"| {fmt(row['frames'])} | {fmt(row['daphne_us_per_frame'])} | {fmt(row['closes'])} "
                    f"| {fmt(row['p50_ms'])} | {fmt(row['p99_ms'])} | {fmt(row['max_ms'])} |"
                )
        lines.append("")
        for mode, run in pair.items():
            lines.append(f"- {mode}: {_bursts_text(run)}")
        if "ours" in pair:
            lines += _reading(pair["ours"])
        if "naive" in pair:
            lines.append(
                "- The naive pattern's worker falls so far behind that its start lasts most of the run and its "
                "jobs do not end by the deadline; the benchmark then closes the sockets, inside its steady phase."
            )
        lines.append("")
    return lines


def _bursts_text(run: dict[str, Any]) -> str:
    b = run["phases"]["bursts"]
    cpu = b.get("steady_cpu_ms_per_interval") or {}
    return (
        f"steady ticks, per {fmt(1000 / run['rate_hz'], 0)} ms interval of the clock (medians of "
        f"{fmt(b['intervals'])}): {fmt(b.get('socket_frames_per_interval'))} socket frames, reported over "
        f"{fmt(b['reports_spread_ms'])} ms and received over {fmt(b['receipts_spread_ms'])} ms; first report to "
        f"last receipt {fmt(b['first_report_to_last_receipt_ms'])} ms (max "
        f"{fmt(b['first_report_to_last_receipt_max_ms'])}); one job frame from its first socket to its last "
        f"{fmt(b.get('frame_sockets_spread_ms'), 2)} ms; CPU ms per interval: "
        + ", ".join(f"{group} {fmt(value, 1)}" for group, value in cpu.items())
        + "."
    )


def _reading(run: dict[str, Any]) -> list[str]:
    """Ours' phases of one run, read in its own numbers."""
    rows = {row["phase"]: row for row in run["phases"]["rows"]}
    steady, window, connect = rows["steady"], rows["window"], run["phases"]["connect"]
    start, ends = rows["start"], rows["ends"]
    b = run["phases"]["bursts"]
    cpu = b.get("steady_cpu_ms_per_interval") or {}
    busy = sum(cpu.get(group) or 0.0 for group in ("daphne", "worker", "clients"))
    lines = []
    if shape(run) == "lockstep" and b.get("receipts_spread_ms") is not None:
        lines.append(
            f"- **The lockstep burst.** A tick's {fmt(b['socket_frames_per_interval'])} socket frames: the "
            f"{run['jobs']} reports made within {fmt(b['reports_spread_ms'])} ms, received over "
            f"{fmt(b['receipts_spread_ms'])} ms, the last {fmt(b['first_report_to_last_receipt_ms'])} ms after the "
            f"first report (median; max {fmt(b['first_report_to_last_receipt_max_ms'])} ms). Its CPU: daphne "
            f"{fmt(cpu.get('daphne'))} ms ({fmt(steady['daphne_us_per_frame'])} µs a frame), the worker "
            f"{fmt(cpu.get('worker'))} ms, the clients {fmt(cpu.get('clients'))} ms: {fmt(busy)} ms due at the same "
            f"moment, so at least {fmt(busy / 2)} ms on two cores. The steady ticks' p50 / p99 are "
            f"{fmt(steady['p50_ms'])} / {fmt(steady['p99_ms'])} ms: when the p99 is near the burst's length, a "
            "frame's latency is its place in the burst, and what shortens it is less CPU per socket frame "
            "(daphne's and the clients') or the burst spread over more cores."
        )
    elif b.get("frame_sockets_spread_ms") is not None:
        lines.append(
            f"- **Spread ticks.** An interval's {fmt(b['socket_frames_per_interval'])} socket frames arrive over "
            f"{fmt(b['receipts_spread_ms'])} ms, one job frame reaching its sockets within "
            f"{fmt(b['frame_sockets_spread_ms'], 2)} ms; {fmt(busy)} ms of CPU per interval (daphne, worker, "
            f"clients); steady p50 / p99 {fmt(steady['p50_ms'])} / {fmt(steady['p99_ms'])} ms."
        )
    if window["frames"]:
        with_connect = (connect["cpu_s"].get("daphne", 0.0) + window["cpu_s"]["daphne"]) * 1e6 / window["frames"]
        lines.append(
            f"- **The whole window** (as one client sees it, from the jobs' start to the last close): p50 / p99 "
            f"{fmt(window['p50_ms'])} / {fmt(window['p99_ms'])} ms, against {fmt(steady['p50_ms'])} / "
            f"{fmt(steady['p99_ms'])} ms for the steady ticks; the start took {fmt(start['seconds'], 2)} s "
            f"(p99 {fmt(start['p99_ms'])} ms) and the ends {fmt(ends['seconds'], 2)} s (p99 {fmt(ends['p99_ms'])} ms, "
            f"{fmt(ends['closes'])} closes). daphne µs of CPU per frame: {fmt(steady['daphne_us_per_frame'])} in the "
            f"steady ticks, {fmt(start['daphne_us_per_frame'])} in the start, {fmt(ends['daphne_us_per_frame'])} in "
            f"the ends, {fmt(window['daphne_us_per_frame'])} over the window, and {fmt(with_connect)} with the "
            f"{fmt(connect['sockets'])} handshakes before it counted too "
            f"({fmt(connect['cpu_s'].get('daphne'), 2)} CPU s, as a measurement of the process from outside sees it)."
        )
    return lines


TARGET_SCENARIO = "1000w/100j@10Hz"  # issue 4's targets are set on this scenario


def _target_check(runs: list[dict[str, Any]]) -> list[str]:
    pair = {run["mode"]: run for run in runs if run["scenario"] == TARGET_SCENARIO and shape(run) == "spread"}
    ours, naive = pair.get("ours"), pair.get("naive")
    if ours is None or ours.get("p99_ms") is None:
        return []
    checks = [
        ("p50 ≤ 2 ms", ours["p50_ms"] <= 2, f"{fmt(ours['p50_ms'])} ms"),
        ("p99 ≤ 10 ms", ours["p99_ms"] <= 10, f"{fmt(ours['p99_ms'])} ms"),
        ("0 frames lost", ours["frames_lost"] == 0, fmt(ours["frames_lost"])),
        ("wall within 5 % of nominal", ours["wall_over_pct"] <= 5, f"{fmt(ours['wall_over_pct'])} %"),
    ]
    if naive is not None and naive.get("p99_ms"):
        ratio = ours["p99_ms"] / naive["p99_ms"]
        checks.append(("p99 ≤ 0.25 of naive p99", ratio <= 0.25, f"{ratio:.3f}"))
    return [
        "",
        f"Issue 4's targets at {TARGET_SCENARIO}, spread load, this run:",
        "",
        *(f"- {name}: {value} — {'met' if met else '**not met**'}" for name, met, value in checks),
    ]


def _plot_over_time(runs: list[dict[str, Any]], path: Path) -> None:
    """p99 per tick: shows when in a run latency grows (start, steady state, the end)."""

    def draw(axis: Any, run: dict[str, Any], color: str) -> None:
        by_tick = {int(tick): value for tick, value in (run.get("p99_ms_by_tick") or {}).items()}
        if by_tick:
            ticks = sorted(by_tick)
            axis.plot([t / run["rate_hz"] for t in ticks], [by_tick[t] for t in ticks], label=run["mode"], color=color)
        axis.set_yscale("log")

    _plot_per_scenario(runs, path, draw, xlabel="seconds into each job", ylabel="p99 latency of the tick, ms (log)")


def _plot_per_scenario(
    runs: list[dict[str, Any]],
    path: Path,
    draw: Callable[[Any, dict[str, Any], str], None],
    *,
    xlabel: str,
    ylabel: str,
) -> None:
    """One panel per scenario and load shape, one line per run (ours blue, naive red)."""
    scenarios = list(dict.fromkeys(panel(run) for run in runs))
    figure, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 3.6), squeeze=False)
    for axis, scenario in zip(axes[0], scenarios, strict=True):
        for run in (r for r in runs if panel(r) == scenario):
            draw(axis, run, "#2563eb" if run["mode"] == "ours" else "#dc2626")
        axis.set_title(scenario)
        axis.set_xlabel(xlabel)
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_fanout(runs: list[dict[str, Any]], path: Path) -> None:
    def draw(axis: Any, run: dict[str, Any], color: str) -> None:
        values = sorted(v for v in run.get("latencies_ms", []) if v > 0)
        if values:
            fractions = [(i + 1) / len(values) for i in range(len(values))]
            axis.plot(values, fractions, label=run["mode"], color=color)
        axis.set_xscale("log")

    _plot_per_scenario(runs, path, draw, xlabel="latency, ms (log)", ylabel="fraction of frames")


MODES = ("ours", "naive")
HEADLINE_RUN_KEYS = (
    "p50_ms",
    "p99_ms",
    "max_ms",
    "frames_lost",
    "frames_expected",
    "daphne_us_per_frame",
    "frames_sent",
    "daphne_cpu_s",
    "worker_cpu_s",
    "clients_cpu_s",
)


def headline(
    fanout: list[dict[str, Any]], reporter: dict[str, Any] | None, capacity: dict[str, Any] | None
) -> dict[str, Any]:
    """The figures a before/after comparison quotes, ours and naive, from the other results."""
    figures: dict[str, Any] = {}
    for load in SHAPES:
        for run in fanout:
            if run["scenario"] == TARGET_SCENARIO and shape(run) == load:
                figures.setdefault(f"{TARGET_SCENARIO} {load}", {})[run["mode"]] = {
                    key: run.get(key) for key in HEADLINE_RUN_KEYS
                }
    if reporter:
        rows = reporter["rows"]
        ours = next((row for row in rows if "real emit" in row["name"]), None)
        naive = next((row for row in rows if row["name"].startswith("celery-progress")), None)
        figures["reporter_ns_per_call"] = {
            "ours": ours and ours["ns_per_call"],
            "ours_row": ours and ours["name"],
            "naive": naive and naive["ns_per_call"],
            "naive_row": naive and naive["name"],
        }
    if capacity:
        sockets = next((part for part in capacity["results"] if part["part"] == "sockets"), None)
        if sockets:
            figures["idle_kb_per_socket"] = {
                "ours": sockets["kb_per_socket"],
                "sockets": sockets["sockets_connected"],
            }
    return figures


def headline_section(figures: dict[str, Any]) -> list[str]:
    lines = [
        "### Headline figures",
        "",
        "What a before/after comparison quotes, from the tables below (also in `bench/results/headline.json`). "
        "CPU per frame: daphne's CPU over the whole window (the worker's start to the last socket's close) "
        "over every frame the clients received in it.",
        "",
        "| figure | ours | naive |",
        "|---|---|---|",
    ]

    def both(runs: dict[str, Any], *keys: str, between: str = " / ") -> str:
        """The keys' values of ours, then of naive, each cell joined by `between`."""
        cells = [between.join(fmt(runs[mode][key]) for key in keys) if mode in runs else "not run" for mode in MODES]
        return " | ".join(cells)

    for load in SHAPES:
        runs = figures.get(f"{TARGET_SCENARIO} {load}")
        if not runs:
            continue
        name = f"{TARGET_SCENARIO}, {load}"
        lines += [
            f"| {name}: p50 / p99 ms | {both(runs, 'p50_ms', 'p99_ms')} |",
            f"| {name}: frames lost | {both(runs, 'frames_lost', 'frames_expected', between=' of ')} |",
            f"| {name}: daphne µs of CPU per delivered frame | {both(runs, 'daphne_us_per_frame')} |",
            f"| {name}: CPU s of daphne / worker / clients "
            f"| {both(runs, 'daphne_cpu_s', 'worker_cpu_s', 'clients_cpu_s')} |",
        ]
    if reporter := figures.get("reporter_ns_per_call"):
        lines.append(
            f"| reporter ns per call (ours: {reporter['ours_row']}; naive: {reporter['naive_row']}) "
            f"| {fmt(reporter['ours'])} | {fmt(reporter['naive'])} |"
        )
    if idle := figures.get("idle_kb_per_socket"):
        lines.append(
            f"| idle KB per socket ({fmt(idle['sockets'])} idle sockets on one daphne) | {fmt(idle['ours'])} | n/a |"
        )
    return [*lines, ""]


def reporter_section(report: dict[str, Any], img: Path) -> list[str]:
    lines = [
        "### Reporter overhead (1,000,000 calls in a real Celery task)",
        "",
        "| reporter | ns per call | calls | frames emitted |",
        "|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {row['name']} | {fmt(row['ns_per_call'])} | {fmt(row['calls'])} | {fmt(row['frames_emitted'])} |"
        )
    lines += ["", "![reporter overhead](img/reporter-overhead.png)", ""]
    figure, axis = plt.subplots(figsize=(8, 3.2))
    names = [row["name"] for row in report["rows"]]
    axis.barh(names, [row["ns_per_call"] for row in report["rows"]], color="#2563eb")
    axis.set_xscale("log")
    axis.set_xlabel("ns per call (log)")
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(img / "reporter-overhead.png", dpi=110)
    plt.close(figure)
    return lines


def worker_publish_section(result: dict[str, Any]) -> list[str]:
    lines = [
        f"### Worker CPU per progress frame ({result['threads']} reporting threads at {fmt(result['rate_hz'])} Hz "
        "in one process, `bench/worker_publish.py`)",
        "",
        "| path | µs of CPU per report | reports | CPU s | wall s |",
        "|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        cells = [row["variant"], fmt(row["us_per_report"]), fmt(row["reports"]), row["cpu_s"], row["wall_s"]]
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return [*lines, ""]


def capacity_section(capacity: dict[str, Any]) -> list[str]:
    lines = ["### Connection capacity", ""]
    for part in capacity["results"]:
        if part["part"] == "sockets":
            lines += [
                f"- **Idle sockets on one daphne**: {fmt(part['sockets_connected'])} of "
                f"{fmt(part['sockets_requested'])} connected in {fmt(part['connect_seconds'])} s; "
                f"RSS {fmt(part['rss_before_mb'])} → {fmt(part['rss_held_mb'])} MB, "
                f"**{fmt(part['kb_per_socket'])} KB per socket**; {fmt(part['sockets_answering'])} answered "
                f"after holding {fmt(part['hold_seconds'])} s; {fmt(part['daphne_cpu_ms_per_connect'])} ms of "
                "daphne CPU per connect.",
            ]
        elif part["part"] == "streams":
            lines += [
                "",
                f"- **Event streams on {part['server']}** (each stream holds a thread for "
                f"{fmt(part['stream_seconds'])} s):",
                "",
                "| clients | first byte within 1 s | first byte of the client past the thread count, ms |",
                "|---|---|---|",
            ]
            lines += [
                f"| {step['clients']} | {step['first_byte_within_1s']} | "
                f"{fmt(step['first_byte_of_client_past_threads_ms'])} |"
                for step in part["steps"]
            ]
        elif part["part"] == "polling":
            lines += [
                "",
                f"- **Polling `{part['path']}` every {fmt(part['interval_seconds'])} s** on {part['server']}:",
                "",
                "| watchers | requests/s needed | served | p50 ms | p99 ms |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {fmt(step['watchers'])} | {fmt(step['requests_per_second_needed'])} | "
                f"{fmt(step['requests_per_second_served'])} | {fmt(step.get('p50_ms'))} | {fmt(step.get('p99_ms'))} |"
                for step in part["steps"]
            ]
    return [*lines, ""]


def submit_section(submit: dict[str, Any]) -> list[str]:
    lines = [
        f"### Submission throughput: `POST /api/jobs/` ({submit['note']})",
        "",
        "| database | daphne processes | clients | jobs/s | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['database']} | {r['daphnes']} | {r['clients']} | {fmt(r['jobs_per_second'])} | {fmt(r['p50_ms'])} "
        f"| {fmt(r['p99_ms'])} | {r['errors']} |"
        for r in submit["results"]
    ]
    return [*lines, ""]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "performance.md")
    args = parser.parse_args()
    img = args.doc.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    meta = load(args.results / "run.json")
    if meta:
        lines += [f"Produced by `{meta['command']}` on {meta['when']} in {meta['seconds']} s.", ""]
        if meta.get("python_loop_ms") is not None:
            lines += [
                f"This machine's pace: 10 million additions in a CPython loop took {fmt(meta['python_loop_ms'])} ms "
                "(the best of 3; compare it before comparing runs from different machines).",
                "",
            ]
    fanout = [*(load(args.results / "fanout.json") or []), *(load(args.results / "fanout_lockstep.json") or [])]
    reporter = load(args.results / "reporter.json")
    capacity = load(args.results / "capacity.json")
    figures = headline(fanout, reporter, capacity)
    (args.results / "headline.json").write_text(json.dumps(figures, indent=1) + "\n")
    top = headline_section(figures)
    print("\n".join(top))
    lines += top
    if fanout:
        lines += fanout_section(fanout, img)
        lines += phases_section(fanout)
    if reporter:
        lines += reporter_section(reporter, img)
    if worker_publish := load(args.results / "worker_publish.json"):
        lines += worker_publish_section(worker_publish)
    if capacity:
        lines += capacity_section(capacity)
    if submit := load(args.results / "submit.json"):
        lines += submit_section(submit)
    doc = args.doc.read_text()
    if BEGIN not in doc or END not in doc:
        print(f"{args.doc} has no {BEGIN} … {END} markers", file=sys.stderr)
        return 1
    head, rest = doc.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    args.doc.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)
    print(f"wrote {args.doc} and the plots in {img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
