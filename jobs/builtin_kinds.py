"""The job kinds jobstream ships: sleep, primes, report, csv_import, pipeline.

Each is a plain function of a reporter and keyword parameters; `@job_kind` declares
its parameters once, and its docstring's first paragraph is what users read (see
jobs/kinds.py).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from jobs.contacts import (
    CSV_ENCODING,
    Contact,
    ContactsFileInvalid,
    contact_from_row,
    contacts_file_check,
    contacts_read,
    rejection_text,
)
from jobs.exceptions import JobError
from jobs.kinds import BooleanParam, ChoiceParam, FileParam, Param, Reporter, StringParam, job_kind, size_text
from jobs.models import ImportedContact, Job
from jobs.steps import Step, Steps
from jobs.storage_quota import StorageQuotaExceeded, import_budget_for
from jobs.uploads import UploadMissing, upload_job_id, upload_path

# --- sleep -----------------------------------------------------------------------


@job_kind(
    name="sleep",
    title="Sleep",
    params=(
        Param("steps", "Steps", 1, 1000, default=10),
        Param("step_seconds", "Seconds per step", 0, 5, default=0.5, integer=False),
        Param(
            "fail_at_step",
            "Fail at step",
            1,
            1000,
            required=False,
            help="Optional: the step at which the job fails on purpose.",
        ),
    ),
    soft_time_limit=5400,  # 1000 steps x 5 s, with room to spare
)
def run_sleep(report: Reporter, *, steps: int, step_seconds: float, fail_at_step: int | None = None) -> dict[str, Any]:
    """Waits step_seconds, steps times, reporting after each step. Set fail_at_step to see
    how a failing job looks."""
    report(current=0, total=steps, message=f"starting {steps} steps")
    report.log(f"sleeping {steps} steps of {step_seconds:g} s")
    for step in range(1, steps + 1):
        if fail_at_step == step:
            raise JobError(f"Failed at step {step}, as asked by fail_at_step.")
        time.sleep(step_seconds)
        report(current=step, total=steps, message=f"step {step} of {steps}")
        report.log(f"step {step} of {steps} done")
    return {"steps": steps, "seconds": round(steps * step_seconds, 3)}


# --- primes ----------------------------------------------------------------------

PRIMES_SEGMENT = 1_000_000  # numbers per sieve segment, and one report each: a bytearray of 1 MB


def _base_primes(limit: int) -> list[int]:
    sieve = bytearray([1]) * (limit + 1)
    sieve[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, limit + 1, n)))
    return [n for n in range(2, limit + 1) if sieve[n]]


@job_kind(
    name="primes",
    title="Count primes",
    params=(Param("limit", "Below", 2, 50_000_000, default=5_000_000),),
)
def run_primes(report: Reporter, *, limit: int) -> dict[str, Any]:
    """Counts the primes below limit with a segmented sieve.

    Counts primes below `limit` with a segmented sieve, one report per segment.
    """
    base = _base_primes(math.isqrt(limit) + 1)
    count = 0
    report(current=0, total=limit, message="sieving")
    segments = math.ceil(limit / PRIMES_SEGMENT)
    report.log(f"sieving below {limit:,} in {segments:,} segment{'s' if segments > 1 else ''} of {PRIMES_SEGMENT:,}")
    for low in range(0, limit, PRIMES_SEGMENT):
        high = min(low + PRIMES_SEGMENT, limit)
        segment = bytearray([1]) * (high - low)
        for p in base:
            if p * p >= high:
                break
            start = max(p * p, (low + p - 1) // p * p)
            segment[start - low :: p] = bytes(len(range(start, high, p)))
        for n in (0, 1):
            if low <= n < high:
                segment[n - low] = 0
        count += segment.count(1)
        report(current=high, total=limit, message=f"checked {high:,} numbers, {count:,} primes")
    report.log(f"{count:,} primes below {limit:,}")
    return {"count": count, "limit": limit}


# --- report ----------------------------------------------------------------------

REPORT_REGIONS = ("North", "South", "East", "West", "Central")
REPORT_PRODUCTS = ("Widget", "Gadget", "Gizmo", "Doohickey", "Sprocket", "Flange")
REPORT_LOG_CHUNK = 50_000  # rows per log line: a few lines a second at the 250,000 rows/s it writes


REPORT_FORMATS = ("csv", "jsonl")
REPORT_COLUMNS = ("order_id", "date", "region", "product", "quantity", "unit_price", "total")
REPORT_REFUND_ODDS = 20  # with include_refunds, one order in this many is a refund (negative quantity)


@job_kind(
    name="report",
    title="Sales report",
    params=(
        Param("rows", "Orders", 1, 1_000_000, default=100_000, help="How many synthetic orders to draw."),
        ChoiceParam(
            "format", "Format", REPORT_FORMATS, default="csv", labels=("CSV", "JSON Lines"), help="The file written."
        ),
        StringParam(
            "region",
            "Region",
            required=False,
            max_length=40,
            pattern=r"^[A-Za-z][A-Za-z ]*$",
            pattern_help="Must be letters and spaces, such as North.",
            help=f"Only orders of this region ({', '.join(REPORT_REGIONS)}); blank for all.",
        ),
        BooleanParam("include_refunds", "Include refunds", help="One order in 20 is a refund, with a negative total."),
        StringParam(
            "since",
            "Since",
            format="date",
            required=False,
            help="Only orders on or after this day (of 2026).",
        ),
        StringParam(
            "prepared_for", "Prepared for", format="email", required=False, help="Named in the result and the log."
        ),
    ),
    soft_time_limit=900,
)
def run_report(
    report: Reporter,
    *,
    rows: int,
    format: str = "csv",
    region: str | None = None,
    include_refunds: bool = False,
    since: date | None = None,
    prepared_for: str | None = None,
) -> dict[str, Any]:
    """Generates a file of synthetic sales data to download, as CSV or JSON Lines.

    Draws `rows` orders of synthetic sales data (the same parameters draw the same
    orders) and writes those that pass the filters (region, since) as the job's result.
    """
    rng = random.Random(rows)  # the same parameters give the same file
    path = report.result_path(f"sales-report.{format}")
    revenue = 0.0
    written = 0
    first_day = date(2026, 1, 1)
    wanted_region = region.strip().lower() if region else None
    report(current=0, total=rows, message="drawing orders")
    filters = [f"region {region}" if region else "", f"since {since.isoformat()}" if since else ""]
    shown = " and ".join(filter(None, filters))
    report.log(
        f"drawing {rows:,} orders into {path.name}"
        + (f", keeping those of {shown}" if shown else "")
        + (", refunds included" if include_refunds else "")
        + (f", prepared for {prepared_for}" if prepared_for else "")
    )
    chunk_start = 1
    with path.open("w", newline="") as handle:
        write = _report_writer(handle, format)
        for row in range(1, rows + 1):
            quantity = rng.randint(1, 20)
            if include_refunds and rng.randrange(REPORT_REFUND_ODDS) == 0:
                quantity = -quantity
            price = round(rng.uniform(2.0, 250.0), 2)
            total = round(quantity * price, 2)
            day = first_day + timedelta(days=rng.randrange(365))
            order_region = rng.choice(REPORT_REGIONS)
            product = rng.choice(REPORT_PRODUCTS)
            if (wanted_region is None or order_region.lower() == wanted_region) and (since is None or day >= since):
                write((row, day.isoformat(), order_region, product, quantity, price, total))
                revenue += total
                written += 1
            if row % 1000 == 0 or row == rows:
                report(current=row, total=rows, message=f"drew {row:,} of {rows:,} orders, {written:,} kept")
            if row % REPORT_LOG_CHUNK == 0 or row == rows:
                report.log(f"wrote rows {chunk_start:,} to {row:,} of {rows:,} ({size_text(handle.tell())} so far)")
                chunk_start = row + 1
    size = path.stat().st_size
    if shown and not written:
        report.log(f"no order is of {shown}: the file has no rows", level="warning")
    report.log(f"done: {written:,} rows, {size_text(size)}, revenue {revenue:,.2f}")
    result: dict[str, Any] = {"rows": written, "revenue": round(revenue, 2), "bytes": size, "format": format}
    if written != rows:
        result["drawn"] = rows
    if prepared_for:
        result["prepared_for"] = prepared_for
    return result


def _report_writer(handle: Any, format: str) -> Callable[[tuple[Any, ...]], None]:
    """Writes one order as a CSV row (after a header) or as a JSON line."""
    if format == "jsonl":

        def write_line(order: tuple[Any, ...]) -> None:
            handle.write(json.dumps(dict(zip(REPORT_COLUMNS, order, strict=True))) + "\n")

        return write_line
    writer = csv.writer(handle)
    writer.writerow(REPORT_COLUMNS)

    def write_row(order: tuple[Any, ...]) -> None:
        *head, price, total = order
        writer.writerow([*head, f"{price:.2f}", f"{total:.2f}"])

    return write_row


# --- csv_import ------------------------------------------------------------------

IMPORT_BATCH = 500  # rows per bulk_create and per progress report: short transactions, frequent reports
ERROR_REPORT_NAME = "errors.csv"
# Rejected rows named one per log line, at most: enough to see what is wrong with a file,
# and past it a file of bad rows is not slowed to the log's pace (errors.csv lists them all).
REJECTED_LINES_MAX = 1_000


@job_kind(
    name="csv_import",
    title="Import contacts (CSV)",
    params=(
        FileParam(
            "file",
            "CSV file",
            max_bytes=5 * 1024 * 1024,
            max_bytes_setting="CSV_IMPORT_MAX_BYTES",
            content_types=("text/csv", "application/csv", "application/vnd.ms-excel", "text/plain"),
            extensions=(".csv",),
            help="UTF-8, with a header line naming the columns email, name, age.",
            check=contacts_file_check,
        ),
    ),
)
def run_csv_import(report: Reporter, *, file: str) -> dict[str, Any]:
    """Imports a CSV of contacts with the columns email, name and age: valid rows are
    stored, and every problem is listed by line and column in a downloadable error report.

    Imports the contacts of an uploaded CSV (email, name, age): every valid row is
    stored as an ImportedContact of this job, every problem goes to the error report
    (`errors.csv`: line, column, error), the job's result file.

    Safe to run twice: it starts by deleting the rows an earlier run of the job stored.
    A cancelled or failed run keeps the rows it stored before it stopped, except one that
    would pass the owner's imported rows quota (JOB_QUOTA_IMPORT_ROWS): it deletes them all.
    """
    try:
        path = upload_path(file)
    except UploadMissing:
        raise JobError("The uploaded file is gone (purged, or not shared with this worker); upload it again.") from None
    job_id = upload_job_id(file)
    report(current=0, total=None, message="counting rows")
    try:
        with path.open(encoding=CSV_ENCODING, newline="") as handle:
            _, rows = contacts_read(handle)
            total = sum(1 for _ in rows)
        report.log(f"{path.name}: {total:,} rows to import")
        earlier, _ = ImportedContact.objects.filter(job_id=job_id).delete()
        if earlier:
            report.log(f"deleted the {earlier:,} rows an earlier run of this job stored")
        budget = import_budget_for(Job.objects.get(pk=job_id))
        imported = errors = done = 0
        report(current=0, total=total, message=f"importing {total:,} rows")
        with (
            path.open(encoding=CSV_ENCODING, newline="") as handle,
            report.result_path(ERROR_REPORT_NAME).open("w", newline="", encoding="utf-8") as out,
        ):
            writer = csv.writer(out)
            writer.writerow(["line", "column", "error"])
            columns, rows = contacts_read(handle)
            while batch := list(itertools.islice(rows, IMPORT_BATCH)):
                valid: list[ImportedContact] = []
                for line, fields in batch:
                    row = contact_from_row(line, fields, columns)
                    if isinstance(row, Contact):
                        valid.append(
                            ImportedContact(job_id=job_id, line=row.line, email=row.email, name=row.name, age=row.age)
                        )
                    else:
                        errors += 1
                        writer.writerows((error.line, error.column, error.error) for error in row)
                        if errors <= REJECTED_LINES_MAX:
                            report.log(f"line {line}: rejected: {rejection_text(row)}", "warning")
                        if errors == REJECTED_LINES_MAX:
                            report.log(
                                f"{REJECTED_LINES_MAX:,} rows rejected: the next are counted below, not named "
                                f"one by one ({ERROR_REPORT_NAME} lists every problem)",
                                "warning",
                            )
                if budget is not None:
                    try:
                        budget.check(imported + len(valid))
                    except StorageQuotaExceeded:
                        ImportedContact.objects.filter(job_id=job_id).delete()
                        raise
                # A line stored already (by a run taken for lost that came back) stays: same file, same row.
                ImportedContact.objects.bulk_create(valid, ignore_conflicts=True)
                imported += len(valid)
                done += len(batch)
                report(current=done, total=total, message=f"imported {imported:,} of {total:,} rows, {errors:,} errors")
                report.log(f"read {done:,} of {total:,} rows: {imported:,} imported, {errors:,} rejected so far")
    except UnicodeDecodeError:
        raise JobError("The file is not UTF-8 text; save it as CSV UTF-8 and upload it again.") from None
    except ContactsFileInvalid as exc:
        raise JobError(str(exc)) from None
    report.log(
        f"done: {imported:,} of {total:,} rows imported, {errors:,} rejected"
        + (f" ({ERROR_REPORT_NAME} lists every problem)" if errors else "")
    )
    return {"rows": total, "imported": imported, "errors": errors}


# --- pipeline --------------------------------------------------------------------

PIPELINE_STEPS = (("generate", 1), ("transform", 4), ("summarize", 1))  # weights: their share of the time
PIPELINE_CHUNKS = 20  # pieces of work (and reports) per step
PIPELINE_LARGEST_START = 1_000_000  # numbers are drawn from 1 to this; their Collatz walks take up to 524 steps
PIPELINE_HISTOGRAM_WIDTH = 25  # steps per histogram bucket of the summary file


def collatz_steps(start: int) -> int:
    """How many steps of n → n/2 (even) or 3n+1 (odd) take `start` to 1."""
    steps, n = 0, start
    while n != 1:
        n = n >> 1 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


def _chunks(count: int) -> list[range]:
    size = max(1, math.ceil(count / PIPELINE_CHUNKS))
    return [range(start, min(start + size, count)) for start in range(0, count, size)]


PIPELINE_FAIL_HELP = "Optional: the step (1-3) that fails halfway, to see how a failing step looks."


@job_kind(
    name="pipeline",
    title="Pipeline (3 steps)",
    params=(
        Param("items", "Numbers", 1, 1_000_000, default=50_000),
        Param("seed", "Seed", 0, 2**31 - 1, default=1, help="The same seed draws the same numbers."),
        Param(
            "pause_ms",
            "Pause per chunk (ms)",
            0,
            1000,
            default=0,
            help=f"A wait after each of the {PIPELINE_CHUNKS} chunks of every step, to watch the steps go by.",
        ),
        Param("fail_at_step", "Fail at step", 1, len(PIPELINE_STEPS), required=False, help=PIPELINE_FAIL_HELP),
    ),
    soft_time_limit=600,  # 3 steps x 20 pauses of at most 1 s, and a million walks
)
def run_pipeline(
    report: Reporter, *, items: int, seed: int = 1, pause_ms: int = 0, fail_at_step: int | None = None
) -> dict[str, Any]:
    """A multi-step job: generates numbers, walks each one's Collatz sequence, and
    summarizes the walk lengths. The bar covers all three steps and names the one running.

    Three steps over `items` numbers: generate them (seeded), transform each into its
    Collatz walk length, summarize the lengths (result, and a histogram CSV). Each step
    reports its own progress; `Steps` folds them into one bar that names the step.
    """
    steps = Steps(report, PIPELINE_STEPS)
    pause = pause_ms / 1000

    def work(step: Step, number: int, verb: str, do: Callable[[range], None]) -> None:
        pieces = _chunks(items)
        for piece_number, piece in enumerate(pieces, start=1):
            if fail_at_step == number and piece_number > len(pieces) // 2:
                raise JobError("it failed on purpose, as asked by fail_at_step.")
            do(piece)
            if pause:
                time.sleep(pause)  # the simulated wait of a step that calls out (pause_ms)
            step(current=piece.stop, total=items, message=f"{verb} {piece.stop:,} of {items:,}")

    rng = random.Random(seed)
    numbers: list[int] = []
    with steps.step("generate") as step:
        work(step, 1, "drew", lambda piece: numbers.extend(rng.randint(1, PIPELINE_LARGEST_START) for _ in piece))
        step.figures = f"drew {items:,} numbers from 1 to {PIPELINE_LARGEST_START:,} (seed {seed})"

    lengths: list[int] = []
    with steps.step("transform") as step:
        work(step, 2, "walked", lambda piece: lengths.extend(collatz_steps(numbers[i]) for i in piece))
        longest = max(range(items), key=lengths.__getitem__)
        step.figures = f"walked {items:,} numbers, the longest {lengths[longest]:,} steps (from {numbers[longest]:,})"

    histogram: Counter[int] = Counter()
    with steps.step("summarize") as step:
        work(step, 3, "counted", lambda piece: histogram.update(lengths[i] // PIPELINE_HISTOGRAM_WIDTH for i in piece))
        path = step.result_path("collatz-histogram.csv")
        with path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["steps_from", "steps_to", "numbers"])
            for bucket in sorted(histogram):
                low = bucket * PIPELINE_HISTOGRAM_WIDTH
                writer.writerow([low, low + PIPELINE_HISTOGRAM_WIDTH - 1, histogram[bucket]])
        step.figures = f"{len(histogram):,} buckets of {PIPELINE_HISTOGRAM_WIDTH} steps written to {path.name}"
    return {
        "items": items,
        "mean_steps": round(statistics.fmean(lengths), 3),
        "median_steps": statistics.median_low(lengths),
        "max_steps": lengths[longest],
        "longest_start": numbers[longest],
    }
