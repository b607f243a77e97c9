"""Typed parameters in a real browser: daphne, a Celery worker, Redis and Chromium, nothing
mocked. The report kind declares one parameter of each type (integer, enum, string with a
pattern, boolean, date, email); its form draws the input each type calls for, a bad value
is answered beside its field and makes no job, and good values run to a result that obeys
them. The same declaration answers the API strictly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import Page, expect

from jobs.models import Job
from tests.e2e.test_browser import JOB_TIMEOUT, first_card, open_index

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

POST_JOB_JS = """
async (body) => {
  const token = (document.cookie.match(/(?:^|;\\s*)csrftoken=([^;]+)/) || [])[1] || "";
  const response = await fetch("/api/jobs/", {
    method: "POST",
    headers: {"Content-Type": "application/json", "X-CSRFToken": token},
    body: JSON.stringify(body),
  });
  return {status: response.status, body: await response.json()};
}
"""


def field(page: Page, name: str) -> Any:
    return page.locator(f"[name='report-{name}']")


def test_the_report_form_draws_an_input_for_each_parameter_type(live_server: LiveServer, page: Page) -> None:
    open_index(page, live_server)
    page.select_option("select[name=kind]", "report")
    expect(page.locator("fieldset[data-kind=report]")).to_be_visible()

    expect(field(page, "rows")).to_have_attribute("type", "number")
    expect(field(page, "rows")).to_have_attribute("step", "1")
    expect(field(page, "rows")).to_have_attribute("max", "1000000")
    expect(field(page, "format")).to_have_js_property("tagName", "SELECT")
    assert field(page, "format").locator("option").all_inner_texts() == ["CSV", "JSON Lines"]
    expect(field(page, "format")).to_have_value("csv")
    expect(field(page, "region")).to_have_attribute("type", "text")
    expect(field(page, "region")).to_have_attribute("maxlength", "40")
    expect(field(page, "include_refunds")).to_have_attribute("type", "checkbox")
    expect(field(page, "include_refunds")).not_to_be_checked()
    expect(field(page, "since")).to_have_attribute("type", "date")
    expect(field(page, "prepared_for")).to_have_attribute("type", "email")
    for name in ("rows", "format", "region", "include_refunds", "since", "prepared_for"):
        label = page.locator(f"label[for='id_report-{name}']")
        expect(label).to_be_visible()
        described = field(page, name).get_attribute("aria-describedby")
        assert described and page.locator(f"#{described}").is_visible(), name  # its help is shown and named


def test_bad_text_and_email_are_answered_beside_their_fields_and_make_no_job(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    page.select_option("select[name=kind]", "report")
    field(page, "rows").fill("100")
    field(page, "region").fill("N0rth!")
    field(page, "prepared_for").fill("ana.example.com")
    page.get_by_role("button", name="Start").click()

    region_error = page.locator("[data-error-for='report-region']")
    expect(region_error).to_be_visible()
    expect(region_error).to_have_text("Must be letters and spaces, such as North.")
    email_error = page.locator("[data-error-for='report-prepared_for']")
    expect(email_error).to_be_visible()
    expect(email_error).to_contain_text("Must be an email address")
    expect(field(page, "region")).to_have_attribute("aria-invalid", "true")
    expect(field(page, "prepared_for")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("[data-error-for='report-rows']")).to_be_hidden()
    expect(page.locator("#jobs article.job")).to_have_count(0)
    assert Job.objects.count() == 0

    # Corrected, the same form starts the job and the messages go.
    field(page, "region").fill("North")
    field(page, "prepared_for").fill("ana@example.com")
    page.get_by_role("button", name="Start").click()
    expect(first_card(page)).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    expect(region_error).to_be_hidden()
    expect(email_error).to_be_hidden()


def test_a_report_with_every_parameter_set_runs_to_a_result_that_obeys_them(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    page.select_option("select[name=kind]", "report")
    field(page, "rows").fill("3000")
    field(page, "format").select_option(label="JSON Lines")
    field(page, "region").fill("North")
    field(page, "include_refunds").check()
    field(page, "since").fill("2026-06-01")
    field(page, "prepared_for").fill("ana@example.com")
    page.get_by_role("button", name="Start").click()

    card = first_card(page)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    params = card.locator(".job__params")
    shown_params = ("rows 3,000", "format jsonl", "region North", "include_refunds true", "since 2026-06-01")
    for shown in (*shown_params, "prepared_for ana@example.com"):
        expect(params).to_contain_text(shown)

    job = Job.objects.get()
    assert job.params == {
        "rows": 3000,
        "format": "jsonl",
        "region": "North",
        "include_refunds": True,
        "since": "2026-06-01",
        "prepared_for": "ana@example.com",
    }
    with page.expect_download() as download_info:
        card.get_by_role("link", name="Download result").click()
    assert download_info.value.suggested_filename == "sales-report.jsonl"
    orders = [json.loads(line) for line in Path(download_info.value.path()).read_text().splitlines()]
    assert orders and len(orders) < 3000
    assert {order["region"] for order in orders} == {"North"}
    assert min(order["date"] for order in orders) >= "2026-06-01"
    assert job.result is not None
    assert job.result["rows"] == len(orders) and job.result["drawn"] == 3000
    assert job.result["prepared_for"] == "ana@example.com"


@pytest.mark.parametrize(
    ("params", "field_name", "message"),
    [
        ({"rows": "3000"}, "rows", "Must be an integer."),
        ({"format": "xlsx"}, "format", "Must be one of: csv, jsonl."),
        ({"region": "N0rth!"}, "region", "Must be letters and spaces, such as North."),
        ({"include_refunds": "yes"}, "include_refunds", "Must be true or false."),
        ({"since": "01/06/2026"}, "since", "Must be a date as YYYY-MM-DD"),
        ({"prepared_for": "ana"}, "prepared_for", "Must be an email address"),
    ],
)
def test_the_api_answers_each_type_strictly_naming_the_field(
    live_server: LiveServer, page: Page, params: dict[str, Any], field_name: str, message: str
) -> None:
    open_index(page, live_server)
    answer = page.evaluate(POST_JOB_JS, {"kind": "report", "params": {"rows": 10, **params}})
    assert answer["status"] == 400, answer
    assert list(answer["body"]["errors"]) == [field_name]
    assert answer["body"]["errors"][field_name][0].startswith(message), answer
    assert Job.objects.count() == 0
