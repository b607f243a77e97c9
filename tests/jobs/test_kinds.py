"""The registry of kinds, their parameters and schemas, and the built-in kinds run
directly with a real reporter (jobs.progress.Progress) whose emit records what it gets."""

from __future__ import annotations

import csv
import json
import math
import re
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from jobs import builtin_kinds
from jobs.builtin_kinds import PRIMES_SEGMENT, run_primes, run_report, run_sleep
from jobs.exceptions import JobError
from jobs.kinds import JobKind, Param, ParamsInvalid, UnknownKind, kind_get, kind_list, register
from jobs.progress import Progress, ProgressUpdate
from tests.log_lines import LogLines


class Recorder:
    """An emit function that keeps every update it is handed."""

    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []

    def __call__(self, update: ProgressUpdate) -> bool:
        self.updates.append(update)
        return False


def reporter(result_dir: Path | None = None, log: LogLines | None = None) -> tuple[Progress, Recorder]:
    recorder = Recorder()
    return Progress(emit=recorder, max_rate=0, result_dir=result_dir, log=log), recorder  # max_rate 0: every call emits


def primes_below(limit: int) -> int:
    """A plain sieve of Eratosthenes to check the segmented one against."""
    sieve = bytearray([1]) * max(limit, 2)
    sieve[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(limit) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, len(sieve), n)))
    return sieve[:limit].count(1)


# --- the registry ----------------------------------------------------------------


def test_kind_list_holds_the_builtin_kinds_sorted_by_name() -> None:
    assert [kind.name for kind in kind_list()] == ["csv_import", "pipeline", "primes", "report", "sleep"]


def test_kind_get_returns_the_registered_kind() -> None:
    assert kind_get("primes").run is run_primes


@pytest.mark.parametrize("name", ["nope", "", "PRIMES", 5, None, ["primes"]])
def test_kind_get_of_unknown_kind_raises_naming_the_known_kinds(name: object) -> None:
    with pytest.raises(UnknownKind) as raised:
        kind_get(name)
    assert str(raised.value) == f"Unknown kind {name!r}; choose one of: csv_import, pipeline, primes, report, sleep."


def test_register_refuses_a_second_kind_of_the_same_name_naming_both_modules() -> None:
    def run_other(report: Any) -> None:
        return None

    with pytest.raises(ValueError) as raised:
        register(JobKind(name="sleep", title="Other", description="", run=run_other))
    assert f"'sleep' is registered twice: in jobs.builtin_kinds and in {__name__};" in str(raised.value)
    assert kind_get("sleep").run is run_sleep


# --- Param.clean -----------------------------------------------------------------

STEPS = Param("steps", "Steps", 1, 1000, default=10)
SECONDS = Param("step_seconds", "Seconds", 0, 5, default=0.5, integer=False)
OPTIONAL = Param("fail_at_step", "Fail at", 1, 1000, required=False)
REQUIRED = Param("size", "Size", 1, 10)


@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        (STEPS, 1, 1),
        (STEPS, 1000, 1000),
        (STEPS, 7.0, 7),
        (SECONDS, 0, 0),
        (SECONDS, 0.25, 0.25),
        (SECONDS, 5, 5),
        (OPTIONAL, None, None),
        (OPTIONAL, 3, 3),
        (REQUIRED, 4, 4),
    ],
)
def test_param_clean_accepts_json_values(param: Param, value: object, expected: object) -> None:
    cleaned = param.clean(value)
    assert cleaned == expected
    assert type(cleaned) is type(expected)


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        (STEPS, None, "Must be an integer, not null; leave it out to take the default, 10."),
        (SECONDS, None, "Must be a number, not null; leave it out to take the default, 0.5."),
        (REQUIRED, None, "Must be an integer, not null."),
        (STEPS, "5", "Must be an integer."),
        (STEPS, True, "Must be an integer."),
        (STEPS, False, "Must be an integer."),
        (STEPS, [5], "Must be an integer."),
        (STEPS, {}, "Must be an integer."),
        (SECONDS, "0.5", "Must be a number."),
        (STEPS, 2.5, "Must be a whole number."),
        (STEPS, float("nan"), "Must be a finite number."),
        (STEPS, float("inf"), "Must be a finite number."),
        (SECONDS, float("-inf"), "Must be a finite number."),
        (STEPS, 0, "Must be between 1 and 1000."),
        (STEPS, 1001, "Must be between 1 and 1000."),
        (STEPS, 10**30, "Must be between 1 and 1000."),
        (SECONDS, -0.01, "Must be between 0 and 5."),
        (SECONDS, 5.01, "Must be between 0 and 5."),
    ],
)
def test_param_clean_refuses_bad_json_values_with_a_message(param: Param, value: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        param.clean(value)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("param", "text", "expected"),
    [
        (STEPS, "", 10),
        (STEPS, "   ", 10),
        (STEPS, " 12 ", 12),
        (SECONDS, "0.25", 0.25),
        (SECONDS, "", 0.5),
        (OPTIONAL, "", None),
        (OPTIONAL, "4", 4),
    ],
)
def test_param_clean_from_text_parses_form_values(param: Param, text: str, expected: object) -> None:
    assert param.clean(text, from_text=True) == expected


@pytest.mark.parametrize(
    ("param", "text", "message"),
    [
        (STEPS, "abc", "Must be an integer."),
        (STEPS, "2.5", "Must be an integer."),
        (SECONDS, "abc", "Must be a number."),
        (SECONDS, "nan", "Must be a finite number."),
        (SECONDS, "inf", "Must be a finite number."),
        (STEPS, "0", "Must be between 1 and 1000."),
        (REQUIRED, "", "This parameter is required."),
    ],
)
def test_param_clean_from_text_refuses_bad_form_values(param: Param, text: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        param.clean(text, from_text=True)
    assert str(raised.value) == message


@pytest.mark.parametrize(("param", "expected"), [(STEPS, 10), (SECONDS, 0.5), (OPTIONAL, None)])
def test_param_absent_takes_its_default(param: Param, expected: object) -> None:
    assert param.absent() == expected


def test_param_absent_refuses_a_required_parameter() -> None:
    with pytest.raises(ValueError, match=r"^This parameter is required\.$"):
        REQUIRED.absent()


@pytest.mark.parametrize("param", [STEPS, SECONDS, OPTIONAL, REQUIRED], ids=lambda param: param.name)
def test_param_takes_null_exactly_where_its_schema_type_lists_null(param: Param) -> None:
    listed = "null" in param.json_schema()["type"]
    try:
        param.clean(None)
    except ValueError:
        assert not listed
    else:
        assert listed


# --- JobKind.validate and schema -------------------------------------------------


def test_validate_fills_in_defaults_and_leaves_out_unset_optionals() -> None:
    assert kind_get("sleep").validate({}) == {"steps": 10, "step_seconds": 0.5}


def test_validate_refuses_null_for_a_parameter_with_a_default() -> None:
    with pytest.raises(ParamsInvalid) as raised:
        kind_get("sleep").validate({"steps": None})
    assert raised.value.errors == {"steps": ["Must be an integer, not null; leave it out to take the default, 10."]}


def test_validate_leaves_out_an_optional_parameter_sent_as_null() -> None:
    assert kind_get("sleep").validate({"fail_at_step": None}) == {"steps": 10, "step_seconds": 0.5}


def test_validate_from_text_takes_blank_and_unposted_fields_as_left_out() -> None:
    cleaned = kind_get("sleep").validate({"steps": "", "step_seconds": None, "fail_at_step": " "}, from_text=True)
    assert cleaned == {"steps": 10, "step_seconds": 0.5}


def test_validate_names_every_bad_and_unknown_parameter() -> None:
    with pytest.raises(ParamsInvalid) as raised:
        kind_get("sleep").validate({"steps": 0, "colour": "red"})
    assert raised.value.errors == {
        "colour": ["Unknown parameter for kind 'sleep'."],
        "steps": ["Must be between 1 and 1000."],
    }


@pytest.mark.parametrize("params", [None, [], "steps=1", 3])
def test_validate_refuses_params_that_are_not_an_object(params: object) -> None:
    with pytest.raises(ParamsInvalid) as raised:
        kind_get("sleep").validate(params)
    assert raised.value.errors == {"params": ["Must be a JSON object of parameters."]}


def test_sleep_schema_declares_every_parameter_with_bounds_and_defaults() -> None:
    assert kind_get("sleep").schema() == {
        "type": "object",
        "title": "Sleep",
        "properties": {
            "steps": {"type": "integer", "title": "Steps", "minimum": 1, "maximum": 1000, "default": 10},
            "step_seconds": {"type": "number", "title": "Seconds per step", "minimum": 0, "maximum": 5, "default": 0.5},
            "fail_at_step": {
                "type": ["integer", "null"],
                "title": "Fail at step",
                "minimum": 1,
                "maximum": 1000,
                "description": "Optional: the step at which the job fails on purpose.",
                "default": None,
            },
        },
        "required": [],
        "additionalProperties": False,
    }


def test_schema_of_a_required_parameter_lists_it_as_required() -> None:
    kind = JobKind(name="unregistered", title="T", description="", run=run_sleep, params=(REQUIRED,))
    schema = kind.schema()
    assert schema["required"] == ["size"]
    assert "default" not in schema["properties"]["size"]


@pytest.mark.parametrize("kind", [k for k in kind_list() if not k.file_params], ids=lambda kind: kind.name)
def test_every_schema_default_passes_its_own_validation(kind: JobKind) -> None:
    defaults = {name: prop["default"] for name, prop in kind.schema()["properties"].items()}
    assert kind.validate(defaults) == {name: value for name, value in defaults.items() if value is not None}


# --- primes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "count"), [(2, 0), (3, 1), (4, 2), (10, 4), (11, 4), (12, 5), (100, 25), (1_000_000, 78498)]
)
def test_primes_counts_the_primes_below_limit(limit: int, count: int) -> None:
    report, _ = reporter()
    assert run_primes(report, limit=limit) == {"count": count, "limit": limit}


@pytest.mark.parametrize(
    "limit", [PRIMES_SEGMENT - 1, PRIMES_SEGMENT, PRIMES_SEGMENT + 1, PRIMES_SEGMENT + 3, PRIMES_SEGMENT + 4]
)
def test_primes_is_exact_across_the_segment_boundary(limit: int) -> None:
    report, _ = reporter()
    assert run_primes(report, limit=limit)["count"] == primes_below(limit)


@pytest.mark.parametrize("segment", [2, 3, 7, 10, 64])
def test_primes_with_small_segments_matches_a_plain_sieve(monkeypatch: pytest.MonkeyPatch, segment: int) -> None:
    monkeypatch.setattr(builtin_kinds, "PRIMES_SEGMENT", segment)
    for limit in range(2, 400):
        report, _ = reporter()
        assert run_primes(report, limit=limit)["count"] == primes_below(limit), limit


def test_primes_reports_once_per_segment_up_to_the_limit() -> None:
    report, recorder = reporter()
    run_primes(report, limit=2 * PRIMES_SEGMENT + 5)
    assert [u.current for u in recorder.updates] == [0, PRIMES_SEGMENT, 2 * PRIMES_SEGMENT, 2 * PRIMES_SEGMENT + 5]
    assert {u.total for u in recorder.updates} == {2 * PRIMES_SEGMENT + 5}
    assert recorder.updates[-1].message == f"checked {2 * PRIMES_SEGMENT + 5:,} numbers, 148,934 primes"


def test_primes_logs_its_segments_and_its_count() -> None:
    log = LogLines()
    run_primes(reporter(log=log)[0], limit=2 * PRIMES_SEGMENT + 5)
    assert log.lines == [
        ("sieving below 2,000,005 in 3 segments of 1,000,000", "info"),
        ("148,934 primes below 2,000,005", "info"),
    ]


# --- report ----------------------------------------------------------------------


def test_report_writes_a_csv_with_a_header_and_one_line_per_row(tmp_path: Path) -> None:
    report, _ = reporter(tmp_path)
    result = run_report(report, rows=25)
    assert report.result_files == [tmp_path / "sales-report.csv"]
    with (tmp_path / "sales-report.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["order_id", "date", "region", "product", "quantity", "unit_price", "total"]
    assert [row[0] for row in rows[1:]] == [str(n) for n in range(1, 26)]
    assert result["rows"] == 25
    assert result["bytes"] == (tmp_path / "sales-report.csv").stat().st_size
    assert result["revenue"] == pytest.approx(sum(float(row[6]) for row in rows[1:]), abs=0.01)


def test_report_rows_are_consistent(tmp_path: Path) -> None:
    report, _ = reporter(tmp_path)
    run_report(report, rows=200)
    with (tmp_path / "sales-report.csv").open(newline="") as handle:
        for row in list(csv.DictReader(handle)):
            assert row["region"] in builtin_kinds.REPORT_REGIONS
            assert row["product"] in builtin_kinds.REPORT_PRODUCTS
            assert 1 <= int(row["quantity"]) <= 20
            assert float(row["total"]) == pytest.approx(int(row["quantity"]) * float(row["unit_price"]), abs=0.011)


def test_report_gives_the_same_file_for_the_same_rows(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    run_report(reporter(first)[0], rows=50)
    run_report(reporter(second)[0], rows=50)
    assert (first / "sales-report.csv").read_bytes() == (second / "sales-report.csv").read_bytes()


def test_report_reports_every_thousand_rows_and_the_last(tmp_path: Path) -> None:
    report, recorder = reporter(tmp_path)
    run_report(report, rows=2500)
    assert [u.current for u in recorder.updates] == [0, 1000, 2000, 2500]
    assert recorder.updates[-1].message == "drew 2,500 of 2,500 orders, 2,500 kept"


def test_report_logs_a_line_per_chunk_written_with_the_bytes_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin_kinds, "REPORT_LOG_CHUNK", 6)
    log = LogLines()
    result = run_report(reporter(tmp_path, log)[0], rows=15)  # under 1 KiB: sizes in bytes

    assert log.at("info") == log.texts  # nothing to warn about
    assert log.texts[0] == "drawing 15 orders into sales-report.csv"
    chunks = [re.fullmatch(r"wrote rows (\d+) to (\d+) of 15 \((\d+) bytes so far\)", text) for text in log.texts[1:-1]]
    assert [(int(m[1]), int(m[2])) for m in chunks if m] == [(1, 6), (7, 12), (13, 15)]
    sizes = [int(m[3]) for m in chunks if m]
    assert sizes == sorted(sizes) and sizes[-1] == result["bytes"]  # every byte written by the last chunk's line
    assert log.texts[-1] == f"done: 15 rows, {result['bytes']} bytes, revenue {result['revenue']:,.2f}"


def test_report_on_its_default_rows_logs_a_few_lines(tmp_path: Path) -> None:
    log = LogLines()
    run_report(reporter(tmp_path, log)[0], **kind_get("report").validate({}))
    assert len(log.lines) == 4  # the start, two chunks of 50,000 rows, the end


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_report_as_jsonl_writes_one_object_per_order_with_the_csv_columns(tmp_path: Path) -> None:
    run_report(reporter(tmp_path / "csv")[0], rows=30)
    report, _ = reporter(tmp_path / "jsonl")
    result = run_report(report, rows=30, format="jsonl")

    assert report.result_files == [tmp_path / "jsonl" / "sales-report.jsonl"]
    orders = read_jsonl(tmp_path / "jsonl" / "sales-report.jsonl")
    assert [order["order_id"] for order in orders] == list(range(1, 31))
    assert all(list(order) == list(builtin_kinds.REPORT_COLUMNS) for order in orders)
    with (tmp_path / "csv" / "sales-report.csv").open(newline="") as handle:
        as_csv = list(csv.DictReader(handle))
    assert [(o["date"], o["region"], o["product"], o["quantity"]) for o in orders] == [
        (row["date"], row["region"], row["product"], int(row["quantity"])) for row in as_csv
    ]  # the same orders, only written otherwise
    assert result["format"] == "jsonl" and result["rows"] == 30 and "drawn" not in result


def test_report_region_keeps_only_that_regions_orders_whatever_its_case(tmp_path: Path) -> None:
    everything, _ = reporter(tmp_path / "all")
    run_report(everything, rows=400, format="jsonl")
    north = [o for o in read_jsonl(tmp_path / "all" / "sales-report.jsonl") if o["region"] == "North"]

    report, recorder = reporter(tmp_path / "north")
    result = run_report(report, rows=400, format="jsonl", region=" north ")

    kept = read_jsonl(tmp_path / "north" / "sales-report.jsonl")
    assert kept == north and 0 < len(kept) < 400
    assert result["rows"] == len(kept) and result["drawn"] == 400
    assert result["revenue"] == pytest.approx(sum(o["total"] for o in kept), abs=0.01)
    assert recorder.updates[-1].message == f"drew 400 of 400 orders, {len(kept)} kept"


def test_report_since_keeps_the_orders_on_and_after_that_day(tmp_path: Path) -> None:
    report, _ = reporter(tmp_path)
    result = run_report(report, rows=300, format="jsonl", since=date(2026, 7, 1))

    kept = read_jsonl(tmp_path / "sales-report.jsonl")
    assert kept and all(o["date"] >= "2026-07-01" for o in kept)
    assert result["rows"] == len(kept) < 300


def test_report_include_refunds_makes_some_orders_negative_and_none_without_it(tmp_path: Path) -> None:
    run_report(reporter(tmp_path / "plain")[0], rows=500, format="jsonl")
    result = run_report(reporter(tmp_path / "refunds")[0], rows=500, format="jsonl", include_refunds=True)

    assert all(o["quantity"] > 0 for o in read_jsonl(tmp_path / "plain" / "sales-report.jsonl"))
    refunds = [o for o in read_jsonl(tmp_path / "refunds" / "sales-report.jsonl") if o["quantity"] < 0]
    assert 0 < len(refunds) < 100  # about one in 20
    assert all(o["total"] < 0 for o in refunds)
    assert result["rows"] == 500


def test_report_names_who_it_was_prepared_for_in_the_result_and_the_log(tmp_path: Path) -> None:
    log = LogLines()
    result = run_report(
        reporter(tmp_path, log)[0], rows=10, region="West", include_refunds=True, prepared_for="ana@example.com"
    )
    assert result["prepared_for"] == "ana@example.com"
    assert log.texts[0] == (
        "drawing 10 orders into sales-report.csv, keeping those of region West, refunds included,"
        " prepared for ana@example.com"
    )


def test_report_whose_filters_keep_nothing_warns_and_writes_only_the_header(tmp_path: Path) -> None:
    log = LogLines()
    result = run_report(reporter(tmp_path, log)[0], rows=50, region="Atlantis", since=date(2026, 3, 1))

    assert (tmp_path / "sales-report.csv").read_text().splitlines() == [",".join(builtin_kinds.REPORT_COLUMNS)]
    assert result["rows"] == 0 and result["drawn"] == 50
    assert log.at("warning") == ["no order is of region Atlantis and since 2026-03-01: the file has no rows"]


def test_report_takes_the_arguments_its_validated_parameters_give(tmp_path: Path) -> None:
    kind = kind_get("report")
    params = kind.validate({"rows": 40, "format": "jsonl", "region": "East", "since": "2026-02-01"})
    arguments = kind.arguments(params)
    assert arguments["since"] == date(2026, 2, 1)
    result = run_report(reporter(tmp_path)[0], **arguments)
    kept = read_jsonl(tmp_path / "sales-report.jsonl")
    assert result["rows"] == len(kept) and all(o["region"] == "East" and o["date"] >= "2026-02-01" for o in kept)


# --- sleep -----------------------------------------------------------------------


def test_sleep_reports_each_step_and_returns_its_totals() -> None:
    report, recorder = reporter()
    assert run_sleep(report, steps=3, step_seconds=0) == {"steps": 3, "seconds": 0}
    assert [(u.current, u.total, u.message) for u in recorder.updates] == [
        (0, 3, "starting 3 steps"),
        (1, 3, "step 1 of 3"),
        (2, 3, "step 2 of 3"),
        (3, 3, "step 3 of 3"),
    ]


def test_sleep_logs_a_line_per_step() -> None:
    log = LogLines()
    run_sleep(reporter(log=log)[0], steps=3, step_seconds=0.25)
    assert log.lines == [
        ("sleeping 3 steps of 0.25 s", "info"),
        ("step 1 of 3 done", "info"),
        ("step 2 of 3 done", "info"),
        ("step 3 of 3 done", "info"),
    ]


def test_sleep_fail_at_step_logs_the_steps_done_before_it() -> None:
    log = LogLines()
    with pytest.raises(JobError):
        run_sleep(reporter(log=log)[0], steps=5, step_seconds=0, fail_at_step=2)
    assert log.texts[1:] == ["step 1 of 5 done"]  # the run's end writes the error line (jobs/services/run.py)


def test_sleep_fail_at_step_raises_job_error_with_a_clear_message() -> None:
    report, recorder = reporter()
    with pytest.raises(JobError) as raised:
        run_sleep(report, steps=5, step_seconds=0, fail_at_step=3)
    assert str(raised.value) == "Failed at step 3, as asked by fail_at_step."
    assert recorder.updates[-1].current == 2  # steps 1 and 2 ran, step 3 did not


def test_sleep_fail_at_step_beyond_steps_never_fails() -> None:
    report, _ = reporter()
    assert run_sleep(report, steps=2, step_seconds=0, fail_at_step=3)["steps"] == 2
