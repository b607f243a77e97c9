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


def fanout_section(runs: list[dict[str, Any]], img: Path) -> list[str]:
    lines = [
        "### Fan-out latency: worker report → websockets client",
        "",
        "| scenario | mode | frames expected | delivered | coalesced or lost | p50 ms | p95 ms | p99 ms | max ms "
        "| wall over nominal | daphne CPU s | worker CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        lines.append(
            f"| {run['scenario']}{' (in step)' if run.get('aligned') else ''} | {run['mode']} "
            f"| {fmt(run['frames_expected'])} | {fmt(run['frames_delivered'])} "
            f"| {fmt(run['frames_lost'])} ({fmt(run['lost_pct'])} %) | {fmt(run['p50_ms'])} | {fmt(run['p95_ms'])} "
            f"| {fmt(run['p99_ms'])} | {fmt(run['max_ms'])} | {wall_over(run)} "
            f"| {fmt(run['daphne_cpu_s'])} | {fmt(run['worker_cpu_s'])} |"
        )
    ratios = []
    for scenario in dict.fromkeys(run["scenario"] for run in runs):
        pair = {run["mode"]: run for run in runs if run["scenario"] == scenario}
        if {"ours", "naive"} <= set(pair) and pair["naive"].get("p99_ms"):
            ratio = pair["ours"]["p99_ms"] / pair["naive"]["p99_ms"]
            ratios.append(f"- {scenario}: p99 ours / naive = {ratio:.2f}")
    lines += ["", *ratios, *_target_check(runs)]
    lines += ["", "![fan-out latency, ours vs naive](img/fanout-latency.png)", ""]
    lines += ["![p99 latency by tick, ours vs naive](img/fanout-over-time.png)", ""]
    _plot_fanout(runs, img / "fanout-latency.png")
    _plot_over_time(runs, img / "fanout-over-time.png")
    return lines


TARGET_SCENARIO = "1000w/100j@10Hz"  # issue 4's targets are set on this scenario


def _target_check(runs: list[dict[str, Any]]) -> list[str]:
    pair = {run["mode"]: run for run in runs if run["scenario"] == TARGET_SCENARIO and not run.get("aligned")}
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
        f"Issue 4's targets at {TARGET_SCENARIO}, this run:",
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
    """One panel per scenario, one line per run (ours blue, naive red)."""
    scenarios = list(dict.fromkeys(run["scenario"] for run in runs))
    figure, axes = plt.subplots(1, len(scenarios), figsize=(5 * len(scenarios), 3.6), squeeze=False)
    for axis, scenario in zip(axes[0], scenarios, strict=True):
        for run in (r for r in runs if r["scenario"] == scenario):
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
    if fanout := load(args.results / "fanout.json"):
        lines += fanout_section(fanout, img)
    if reporter := load(args.results / "reporter.json"):
        lines += reporter_section(reporter, img)
    if worker_publish := load(args.results / "worker_publish.json"):
        lines += worker_publish_section(worker_publish)
    if capacity := load(args.results / "capacity.json"):
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
