"""The CSV import through the page in a real browser: the form posts the file as
multipart/form-data (jobs/static/jobs/form.js), a real worker imports it, the card goes live to
succeeded and its error report downloads; a bad file is refused next to its input.
daphne, a Celery worker, Redis and Chromium, nothing mocked."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from playwright.sync_api import FilePayload, Page, expect

from jobs.models import ImportedContact
from tests.e2e.test_browser import JOB_TIMEOUT, first_card, open_index

if TYPE_CHECKING:
    from tests.conftest import LiveServer

pytestmark = pytest.mark.django_db(transaction=True)

CONTACTS = b"email,name,age\nada@example.com,Ada Lovelace,36\ngrace@example.com,Grace Hopper,85\nnobody,No One,200\n"
FILE_INPUT = "input[name='csv_import-file']"


def choose_file(page: Page, content: bytes, name: str = "contacts.csv") -> None:
    page.select_option("select[name=kind]", "csv_import")
    payload: FilePayload = {"name": name, "mimeType": "text/csv", "buffer": content}
    page.set_input_files(FILE_INPUT, files=[payload])


def test_csv_uploaded_through_the_form_imports_and_its_error_report_downloads(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    url = page.url
    choose_file(page, CONTACTS)
    page.get_by_role("button", name="Start").click()

    card = first_card(page)
    expect(card).to_have_attribute("data-state", "succeeded", timeout=JOB_TIMEOUT)
    expect(card.locator(".job__message")).to_have_text("imported 2 of 3 rows, 1 errors")
    expect(card.locator(".job__result")).to_contain_text("imported")
    assert page.url == url  # posted by the script: no reload
    assert page.input_value(FILE_INPUT) == ""  # cleared for the next file
    job_id = (card.get_attribute("id") or "").removeprefix("job-")
    assert sorted(ImportedContact.objects.filter(job_id=job_id).values_list("email", flat=True)) == [
        "ada@example.com",
        "grace@example.com",
    ]

    with page.expect_download() as download_info:
        card.get_by_role("link", name="Download result").click()
    assert download_info.value.suggested_filename == "errors.csv"
    with Path(download_info.value.path()).open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["line", "column", "error"],
        ["4", "email", "'nobody' is not an email address"],
        ["4", "age", "200 is not between 0 and 150"],
    ]


def test_csv_without_a_needed_column_is_refused_next_to_the_file_input(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    choose_file(page, b"email,name\nada@example.com,Ada\n")
    page.get_by_role("button", name="Start").click()

    error = page.locator("[data-error-for='csv_import-file']")
    expect(error).to_be_visible()
    expect(error).to_contain_text("missing the column age")
    expect(page.locator(FILE_INPUT)).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#jobs article.job")).to_have_count(0)


def test_file_over_the_limit_is_refused_in_the_page_before_it_is_sent(
    live_server: LiveServer, worker: Any, page: Page
) -> None:
    open_index(page, live_server)
    limit = int(page.get_attribute(FILE_INPUT, "data-max-bytes") or 0)
    assert limit == 5 * 1024 * 1024
    posts: list[str] = []
    page.on("request", lambda request: posts.append(request.url) if request.method == "POST" else None)
    choose_file(page, CONTACTS + b"x" * limit)
    page.get_by_role("button", name="Start").click()

    error = page.locator("[data-error-for='csv_import-file']")
    expect(error).to_contain_text("over the limit of 5 MiB")
    assert posts == []
    expect(page.locator("#jobs article.job")).to_have_count(0)
