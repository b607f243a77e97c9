#!/usr/bin/env bash
# Every benchmark, side by side, then docs/performance.md's tables and plots.
#   bash bench/run.sh        (or: make bench)
# Each script starts what it needs on loopback and stops it by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
out=bench/results
mkdir -p "$out"
started=$(date +%s)
# The machine's pace, so runs on different machines can be compared (report.py prints it).
pace=$($PY -c 'import time
def loop():
    t = time.perf_counter(); s = 0
    for i in range(10_000_000): s += i
    return (time.perf_counter() - t) * 1000
print(round(min(loop() for _ in range(3))))')

echo "== reporter overhead"
$PY bench/reporter_overhead.py | tee "$out/reporter.log"
tail -n 1 "$out/reporter.log" > "$out/reporter.json"

echo "== worker CPU per progress frame"
$PY bench/worker_publish.py --repeat 1 --seconds 4 | tee "$out/worker_publish.log"
tail -n 1 "$out/worker_publish.log" > "$out/worker_publish.json"

echo "== fan-out latency, spread load (tick phases over the interval): ours vs naive"
$PY bench/fanout.py --out "$out/fanout.json"

echo "== fan-out latency, lockstep load (every job ticks at the same instant): ours vs naive"
$PY bench/fanout.py --aligned --scenario 1000w/100j@10Hz --out "$out/fanout_lockstep.json"

echo "== job logs: a job writing 1,000 lines/s beside 100 ticking jobs (its table in docs/performance.md is copied by hand)"
$PY bench/log_flood.py --out "$out/log_flood.json" | tee "$out/log_flood.log"

echo "== connection capacity"
$PY bench/capacity.py --out "$out/capacity.json"

echo "== submission throughput"
$PY bench/submit_throughput.py --duration 2 --out "$out/submit.json"

seconds=$(( $(date +%s) - started ))
printf '{"command": "bash bench/run.sh", "when": "%s", "seconds": %d, "python_loop_ms": %d}\n' \
  "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$seconds" "$pace" > "$out/run.json"
$PY bench/report.py --results "$out"
echo "bench: every scenario in ${seconds} s"
