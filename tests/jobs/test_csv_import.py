"""csv_import: the file parameter (its schema, form field and checks), the API's
multipart upload and every bad upload, the page's form, the contacts checks, the kind
run directly and on a real worker (rows stored, error report downloadable), and the
removal of uploads with their job."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client, override_settings
from django.utils import timezone

from jobs import builtin_kinds
from jobs.builtin_kinds import run_csv_import
from jobs.contacts import ContactsFileInvalid, RowError, contact_from_row, contacts_file_check
from jobs.exceptions import JobError
from jobs.forms import params_form
from jobs.kinds import FileParam, FileTooLarge, JobKind, ParamsInvalid, kind_get, size_text
from jobs.models import ImportedContact, Job, JobState
from jobs.owners import Owner
from jobs.progress import Progress, ProgressUpdate
from jobs.services import job_create, job_purge_finished
from jobs.uploads import UPLOADS_DIR, upload_dir, upload_job_id, upload_path
from tests.log_lines import LogLines
from tests.waiting import wait_until

Response = Any

GOOD_CSV = (
    b"email,name,age\n"
    b"ada@example.com,Ada Lovelace,36\n"
    b"not-an-email,Bob,40\n"
    b"\n"  # blank lines are skipped, not rows
    b"grace@example.com,Grace Hopper,85\n"
    b"alan@example.com,,abc\n"
    b'"linus@example.com","Linus, the second",54\n'
)
# Line numbers as an editor shows them: the header is line 1, the blank line 4.
GOOD_ERRORS = [
    ["line", "column", "error"],
    ["3", "email", "'not-an-email' is not an email address"],
    ["6", "name", "missing"],
    ["6", "age", "'abc' is not a whole number"],
]
OWNER = Owner(token="t" * 32)


@pytest.fixture(autouse=True)
def own_media_root(tmp_path: Path) -> Iterator[Path]:
    """Each test its own MEDIA_ROOT: rows roll back between tests, files would not."""
    media = tmp_path / "media"
    with override_settings(MEDIA_ROOT=str(media)):
        yield media


def csv_file(content: bytes = GOOD_CSV, name: str = "contacts.csv", content_type: str = "text/csv") -> Any:
    return SimpleUploadedFile(name, content, content_type=content_type)


def post_upload(client: Client, file: Any = None, *, kind: str = "csv_import", **fields: Any) -> Response:
    data: dict[str, Any] = {"kind": kind, **fields}
    if file is not None:
        data["file"] = file
    response: Response = client.post("/api/jobs/", data)  # the test client encodes multipart/form-data
    return response


def errors_of(response: Response) -> dict[str, list[str]]:
    body = response.json()
    assert set(body) == {"errors"}, body
    errors: dict[str, list[str]] = body["errors"]
    return errors


def uploads_left(media: Path) -> list[Path]:
    root = media / UPLOADS_DIR
    return sorted(root.rglob("*")) if root.exists() else []


class Recorder:
    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []

    def __call__(self, update: ProgressUpdate) -> bool:
        self.updates.append(update)
        return False


def reporter(result_dir: Path, log: LogLines | None = None) -> tuple[Any, Recorder]:
    recorder = Recorder()
    progress = Progress(emit=recorder, max_rate=0, result_dir=result_dir, log=log)  # max_rate 0: every call emits
    return progress.as_function(), recorder


def read_csv(path: Path | bytes) -> list[list[str]]:
    text = path.decode() if isinstance(path, bytes) else path.read_text()
    return list(csv.reader(io.StringIO(text)))


# --- the file parameter ------------------------------------------------------------

FILE = FileParam("file", "A file", max_bytes=100, content_types=("text/csv",), extensions=(".csv",))


def test_file_param_schema_is_a_binary_string_with_its_media_type_and_limit() -> None:
    schema = kind_get("csv_import").schema()
    assert schema["required"] == ["file"]
    prop = schema["properties"]["file"]
    assert prop["type"] == "string"
    assert prop["format"] == "binary"
    assert prop["contentMediaType"] == "text/csv"
    assert prop["x-max-bytes"] == 5 * 1024 * 1024
    assert ".csv" in prop["x-accept"]
    assert "multipart/form-data" in prop["description"]


@pytest.mark.django_db
def test_job_kinds_serves_the_file_schema_with_the_configured_limit(client: Client) -> None:
    with override_settings(CSV_IMPORT_MAX_BYTES=1234):
        kinds = {kind["name"]: kind for kind in client.get("/api/job-kinds/").json()}
    assert kinds["csv_import"]["schema"]["properties"]["file"]["x-max-bytes"] == 1234


@pytest.mark.parametrize(
    ("upload", "message"),
    [
        (None, "This file is required"),
        ("uploads/x/contacts.csv", "multipart/form-data"),  # a path in JSON is never taken for a file
        (SimpleUploadedFile("a.csv", b"x" * 101, "text/csv"), "The file 'a.csv' is 101 bytes; the limit is 100 bytes."),
        (SimpleUploadedFile("a.csv", b"", "text/csv"), "The file 'a.csv' is empty."),
        (SimpleUploadedFile("a.png", b"\x89PNG", "image/png"), "is not a .csv or text/csv file"),
    ],
    ids=["missing", "a-string", "over-the-limit", "empty", "a-png"],
)
def test_file_param_clean_refuses_naming_the_problem(upload: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        FILE.clean(upload)


def test_file_param_over_the_limit_raises_file_too_large() -> None:
    with pytest.raises(FileTooLarge):
        FILE.clean(SimpleUploadedFile("a.csv", b"x" * 101, "text/csv"))


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("a.csv", "application/octet-stream"), ("A.CSV", ""), ("export", "text/csv"), ("a.txt", "TEXT/CSV")],
)
def test_file_param_takes_an_accepted_type_or_extension(name: str, content_type: str) -> None:
    upload = SimpleUploadedFile(name, b"x" * 100, content_type)
    assert FILE.clean(upload) is upload


def test_file_param_runs_its_check_last() -> None:
    def refuse(upload: Any) -> None:
        raise ValueError(f"checked {upload.name}")

    param = FileParam("file", "A file", max_bytes=100, check=refuse)
    with pytest.raises(ValueError, match=r"checked a\.csv"):
        param.clean(SimpleUploadedFile("a.csv", b"x", "text/csv"))


def test_validate_takes_the_upload_from_files_and_numbers_from_params() -> None:
    kind = JobKind(name="unregistered", title="T", description="", run=run_csv_import, params=(FILE,))
    upload = SimpleUploadedFile("a.csv", b"x", "text/csv")
    assert kind.validate({}, files={"file": upload}) == {"file": upload}


def test_validate_refuses_a_file_named_in_json_params_and_unknown_files() -> None:
    kind = JobKind(name="unregistered", title="T", description="", run=run_csv_import, params=(FILE,))
    upload = SimpleUploadedFile("a.csv", b"x", "text/csv")
    with pytest.raises(ParamsInvalid) as raised:
        kind.validate({"file": "a.csv"}, files={"other": upload})
    assert set(raised.value.errors) == {"file", "other"}
    assert "multipart/form-data" in raised.value.errors["file"][0]
    assert raised.value.status == 400


def test_validate_of_a_file_over_the_limit_has_status_413() -> None:
    kind = JobKind(name="unregistered", title="T", description="", run=run_csv_import, params=(FILE,))
    with pytest.raises(ParamsInvalid) as raised:
        kind.validate({}, files={"file": SimpleUploadedFile("a.csv", b"x" * 101, "text/csv")})
    assert raised.value.status == 413


def test_params_form_renders_a_file_input_with_accept_and_the_limit() -> None:
    with override_settings(CSV_IMPORT_MAX_BYTES=2 * 1024 * 1024):
        html = str(params_form(kind_get("csv_import")))
    tag = re.search(r'<input [^>]*name="csv_import-file"[^>]*>', html)
    assert tag is not None
    assert 'type="file"' in tag.group(0)
    assert 'accept=".csv,text/csv' in tag.group(0)
    assert 'data-max-bytes="2097152"' in tag.group(0)
    assert "At most 2 MiB." in html


@pytest.mark.parametrize(
    ("size", "text"), [(0, "0 bytes"), (1023, "1023 bytes"), (1536, "1.5 KiB"), (5 << 20, "5 MiB")]
)
def test_size_text_reads_as_people_write_sizes(size: int, text: str) -> None:
    assert size_text(size) == text


# --- the contacts file and rows ----------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"email,name,age\nb\xe9a@example.com,B\xe9a,3\n", "not UTF-8 text: line 2 holds the byte 0xe9"),
        (b"email,name\na@example.com,A\n", "missing the column age"),
        (b"mail;name;years\n", "missing the columns email, name, age"),
        (b"email,name,age,Email\n", "names the column 'email' twice"),
        (b"email,name,age\n" + b'a@example.com,"' + b"x" * 200_000 + b'",3\n', "Line 2 is not valid CSV"),
    ],
    ids=["latin-1", "no-age", "semicolons", "email-twice", "field-over-csv-limit"],
)
def test_contacts_file_check_refuses_naming_the_problem(content: bytes, message: str) -> None:
    with pytest.raises(ContactsFileInvalid, match=re.escape(message)):
        contacts_file_check(csv_file(content))


def test_contacts_file_check_takes_a_byte_order_mark_any_column_order_and_extra_columns() -> None:
    contacts_file_check(csv_file(b"\xef\xbb\xbf Age ,note,EMAIL,Name\r\n3,hi,a@example.com,A\r\n"))


COLUMNS = {"email": 0, "name": 1, "age": 2}


@pytest.mark.parametrize(
    ("fields", "errors"),
    [
        (["a@example.com", "A", "0"], []),
        ([" a@example.com ", " A ", " 150 "], []),
        (["a@", "A", "3"], [("email", "'a@' is not an email address")]),
        (["", "A", "3"], [("email", "missing")]),
        (["a" * 250 + "@example.com", "A", "3"], [("email", "longer than 254 characters")]),
        (["a@example.com", "x" * 201, "3"], [("name", "longer than 200 characters (201)")]),
        (["a@example.com", "A", "151"], [("age", "151 is not between 0 and 150")]),
        (["a@example.com", "A", "-1"], [("age", "-1 is not between 0 and 150")]),
        (["a@example.com", "A", "3.5"], [("age", "'3.5' is not a whole number")]),
        (["a@example.com", "A", "1_0"], [("age", "'1_0' is not a whole number")]),
        (["a@example.com", "A", "٣"], [("age", "'٣' is not a whole number")]),
        (["a@example.com"], [("name", "missing"), ("age", "missing")]),
    ],
)
def test_contact_from_row_validates_every_column(fields: list[str], errors: list[tuple[str, str]]) -> None:
    row = contact_from_row(7, fields, COLUMNS)
    if errors:
        assert row == [RowError(7, column, error) for column, error in errors]
    else:
        assert not isinstance(row, list)
        assert (row.line, row.email, row.name) == (7, fields[0].strip(), fields[1].strip())


# --- the API -------------------------------------------------------------------------


@pytest.mark.django_db
def test_upload_answers_201_and_stores_the_file_under_the_job(client: Client, own_media_root: Path) -> None:
    response = post_upload(client, csv_file(), params="{}")

    assert response.status_code == 201, response.content
    job = response.json()
    assert response["Location"] == f"/api/jobs/{job['id']}/"
    assert (job["kind"], job["state"]) == ("csv_import", "queued")
    assert job["params"] == {"file": f"uploads/{job['id']}/contacts.csv"}
    assert (own_media_root / job["params"]["file"]).read_bytes() == GOOD_CSV
    assert upload_job_id(job["params"]["file"]) == Job.objects.get().id


@pytest.mark.django_db
def test_upload_keeps_a_safe_file_name(client: Client) -> None:
    response = post_upload(client, csv_file(name="../../my contacts (1).csv"))
    assert response.status_code == 201, response.content
    assert response.json()["params"]["file"].endswith("/my_contacts_1.csv")


BAD_UPLOADS = [
    # id, content, content type, file name, status, field, words of the message
    ("empty", b"", "text/csv", "contacts.csv", 400, "file", "is empty"),
    ("not-utf-8", b"email,name,age\na@example.com,J\xfcrgen,3\n", "text/csv", "c.csv", 400, "file", "not UTF-8"),
    ("no-age-column", b"email,name\na@example.com,A\n", "text/csv", "c.csv", 400, "file", "missing the column age"),
    ("no-header", b"\n\n", "text/csv", "c.csv", 400, "file", "missing the columns email, name, age"),
    ("a-png", b"\x89PNG\r\n", "image/png", "photo.png", 400, "file", "not a .csv"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("content", "content_type", "name", "status", "field", "words"),
    [case[1:] for case in BAD_UPLOADS],
    ids=[case[0] for case in BAD_UPLOADS],
)
def test_bad_upload_answers_its_status_naming_the_problem(
    client: Client,
    own_media_root: Path,
    content: bytes,
    content_type: str,
    name: str,
    status: int,
    field: str,
    words: str,
) -> None:
    response = post_upload(client, csv_file(content, name=name, content_type=content_type))

    assert response.status_code == status, response.content
    assert words in errors_of(response)[field][0]
    assert not Job.objects.exists()
    assert uploads_left(own_media_root) == []


@pytest.mark.django_db
def test_upload_over_the_limit_answers_413_naming_the_file_and_the_limit(client: Client, own_media_root: Path) -> None:
    with override_settings(CSV_IMPORT_MAX_BYTES=100):
        response = post_upload(client, csv_file(GOOD_CSV + b"x@example.com,X,1\n" * 10))

    assert response.status_code == 413, response.content
    message = errors_of(response)["file"][0]
    assert "'contacts.csv'" in message
    assert "the limit is 100 bytes (CSV_IMPORT_MAX_BYTES)" in message
    assert not Job.objects.exists()
    assert uploads_left(own_media_root) == []


@pytest.mark.django_db
def test_body_far_over_the_limit_answers_413_before_it_is_parsed(client: Client, own_media_root: Path) -> None:
    with override_settings(CSV_IMPORT_MAX_BYTES=1000):
        response = post_upload(client, csv_file(b"email,name,age\n" + b"x" * 100_000))

    assert response.status_code == 413, response.content
    assert "a file may be at most 1000 bytes (CSV_IMPORT_MAX_BYTES)" in errors_of(response)["file"][0]
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_upload_without_a_file_answers_400_naming_file(client: Client) -> None:
    response = post_upload(client, params="{}")
    assert response.status_code == 400
    assert "This file is required" in errors_of(response)["file"][0]


@pytest.mark.django_db
@pytest.mark.parametrize("params", [{}, {"file": "uploads/x/contacts.csv"}])
def test_json_body_for_csv_import_answers_400_naming_file(client: Client, params: dict[str, Any]) -> None:
    body = json.dumps({"kind": "csv_import", "params": params})
    response = client.post("/api/jobs/", body, content_type="application/json")
    assert response.status_code == 400
    assert "multipart/form-data" in errors_of(response)["file"][0]
    assert not Job.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", ["text/csv", "application/octet-stream", "application/x-www-form-urlencoded"])
def test_upload_with_another_content_type_answers_415(client: Client, content_type: str) -> None:
    response = client.post("/api/jobs/", GOOD_CSV, content_type=content_type)
    assert response.status_code == 415
    assert "content_type" in errors_of(response)


@pytest.mark.django_db
def test_multipart_for_a_kind_without_a_file_answers_415(client: Client) -> None:
    response = client.post("/api/jobs/", {"kind": "primes", "params": '{"limit": 100}'})
    assert response.status_code == 415
    assert "takes no file" in errors_of(response)["content_type"][0]


@pytest.mark.django_db
def test_multipart_without_a_kind_answers_415_saying_which_kinds_take_it(client: Client) -> None:
    response = client.post("/api/jobs/", {"file": csv_file()})
    assert response.status_code == 415
    assert "'kind'" in errors_of(response)["content_type"][0]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"kind": "nope"}, "kind", "Unknown kind 'nope'"),
        ({"params": "{not json"}, "params", "Malformed JSON"),
        ({"params": '{"limit": NaN}'}, "params", "NaN is not allowed"),
        ({"params": "[1]"}, "params", "JSON object"),
        ({"params": '{"rows": 3}'}, "rows", "Unknown parameter"),
        ({"extra": "1"}, "extra", "Unknown field"),
        ({"kind": ["csv_import", "csv_import"]}, "kind", "Send one 'kind'"),
    ],
    ids=[
        "unknown-kind",
        "params-malformed",
        "params-nan",
        "params-array",
        "params-unknown",
        "extra-field",
        "two-kinds",
    ],
)
def test_bad_multipart_fields_answer_400_naming_them(
    client: Client, fields: dict[str, Any], field: str, words: str
) -> None:
    data = {"kind": "csv_import", "file": csv_file(), **fields}
    response = client.post("/api/jobs/", data)
    assert response.status_code == 400, response.content
    assert words in " ".join(errors_of(response)[field])
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_two_files_answer_400(client: Client) -> None:
    response = client.post("/api/jobs/", {"kind": "csv_import", "file": [csv_file(), csv_file(name="b.csv")]})
    assert response.status_code == 400
    assert "Send one 'file'" in errors_of(response)["file"][0]


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary="])
def test_malformed_multipart_answers_400_json_naming_the_body(client: Client, content_type: str) -> None:
    response = client.post("/api/jobs/", b"x", content_type=content_type)
    assert response.status_code == 400
    assert response["Content-Type"].startswith("application/json")
    assert "multipart" in errors_of(response)["body"][0]


@pytest.mark.django_db
def test_openapi_documents_the_multipart_body(client: Client) -> None:
    content = client.get("/api/openapi.json").json()["paths"]["/api/jobs/"]["post"]["requestBody"]["content"]
    schema = content["multipart/form-data"]["schema"]
    assert set(schema["properties"]) == {"kind", "params", "file", "notify"}
    assert schema["properties"]["file"]["format"] == "binary"


# --- the page's form (without JavaScript) ------------------------------------------------


def page_client() -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    assert client.get("/").status_code == 200
    return client, client.cookies["csrftoken"].value


@pytest.mark.django_db
def test_form_upload_creates_the_job_and_redirects_to_it() -> None:
    client, token = page_client()
    response = client.post("/", {"csrfmiddlewaretoken": token, "kind": "csv_import", "csv_import-file": csv_file()})
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/#job-{job.id}"
    assert job.params == {"file": f"uploads/{job.id}/contacts.csv"}


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("file", "words"),
    [(None, "Choose a file to upload."), (csv_file(b"email,name\n"), "missing the column age")],
    ids=["no-file", "no-age-column"],
)
def test_form_with_a_bad_upload_shows_the_error_by_the_file_input(file: Any, words: str) -> None:
    client, token = page_client()
    data: dict[str, Any] = {"csrfmiddlewaretoken": token, "kind": "csv_import"}
    if file is not None:
        data["csv_import-file"] = file
    response = client.post("/", data)

    assert response.status_code == 400
    error = re.search(r'data-error-for="csv_import-file"[^>]*>([^<]*)<', response.content.decode())
    assert error is not None
    assert words in error.group(1).replace("&#x27;", "'")
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_index_posts_multipart_and_opens_on_a_kind_without_a_file() -> None:
    html = Client().get("/").content.decode()
    assert 'enctype="multipart/form-data"' in html
    assert re.search(r'<option value="csv_import"(?! selected)', html)


# --- the kind, run directly ------------------------------------------------------------------


def create_import(content: bytes = GOOD_CSV) -> Job:
    return job_create(owner=OWNER, kind="csv_import", params={}, files={"file": csv_file(content)})


@pytest.mark.django_db
def test_run_stores_valid_rows_and_writes_the_error_report(tmp_path: Path) -> None:
    job = create_import()
    report, _ = reporter(tmp_path)

    result = run_csv_import(report, file=job.params["file"])

    assert result == {"rows": 5, "imported": 3, "errors": 2}
    rows = list(ImportedContact.objects.filter(job=job).values_list("line", "email", "name", "age"))
    assert rows == [
        (2, "ada@example.com", "Ada Lovelace", 36),
        (5, "grace@example.com", "Grace Hopper", 85),
        (7, "linus@example.com", "Linus, the second", 54),
    ]
    assert read_csv(tmp_path / "errors.csv") == GOOD_ERRORS


@pytest.mark.django_db
def test_run_reports_per_batch_with_rows_done_and_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(builtin_kinds, "IMPORT_BATCH", 2)
    job = create_import()
    report, recorder = reporter(tmp_path)

    run_csv_import(report, file=job.params["file"])

    assert [(u.current, u.total, u.message) for u in recorder.updates] == [
        (0, None, "counting rows"),
        (0, 5, "importing 5 rows"),
        (2, 5, "imported 1 of 5 rows, 1 errors"),
        (4, 5, "imported 2 of 5 rows, 2 errors"),
        (5, 5, "imported 3 of 5 rows, 2 errors"),
    ]


@pytest.mark.django_db
def test_run_logs_a_warning_per_rejected_row_naming_its_line_and_why(tmp_path: Path) -> None:
    job = create_import()
    log = LogLines()
    run_csv_import(reporter(tmp_path, log)[0], file=job.params["file"])
    assert log.at("warning") == [
        "line 3: rejected: email: 'not-an-email' is not an email address",
        "line 6: rejected: name: missing; age: 'abc' is not a whole number",
    ]


@pytest.mark.django_db
def test_run_names_the_first_rejected_rows_then_only_counts_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin_kinds, "REJECTED_LINES_MAX", 1)
    job = create_import()
    log = LogLines()
    run_csv_import(reporter(tmp_path, log)[0], file=job.params["file"])
    assert log.at("warning") == [
        "line 3: rejected: email: 'not-an-email' is not an email address",
        "1 rows rejected: the next are counted below, not named one by one (errors.csv lists every problem)",
    ]
    assert log.lines[-1] == ("done: 3 of 5 rows imported, 2 rejected (errors.csv lists every problem)", "info")


@pytest.mark.django_db
def test_run_logs_a_line_per_batch_with_rows_so_far_and_rejected_so_far(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(builtin_kinds, "IMPORT_BATCH", 2)
    job = create_import()
    log = LogLines()
    run_csv_import(reporter(tmp_path, log)[0], file=job.params["file"])
    assert log.lines == [
        ("contacts.csv: 5 rows to import", "info"),
        ("line 3: rejected: email: 'not-an-email' is not an email address", "warning"),
        ("read 2 of 5 rows: 1 imported, 1 rejected so far", "info"),
        ("line 6: rejected: name: missing; age: 'abc' is not a whole number", "warning"),
        ("read 4 of 5 rows: 2 imported, 2 rejected so far", "info"),
        ("read 5 of 5 rows: 3 imported, 2 rejected so far", "info"),
        ("done: 3 of 5 rows imported, 2 rejected (errors.csv lists every problem)", "info"),
    ]


@pytest.mark.django_db
def test_run_again_logs_the_rows_of_the_earlier_run_it_deleted(tmp_path: Path) -> None:
    job = create_import()
    run_csv_import(reporter(tmp_path)[0], file=job.params["file"])
    log = LogLines()
    run_csv_import(reporter(tmp_path, log)[0], file=job.params["file"])
    assert log.texts[1] == "deleted the 3 rows an earlier run of this job stored"


@pytest.mark.django_db
def test_run_twice_stores_each_row_once_and_drops_rows_of_an_earlier_run(tmp_path: Path) -> None:
    job = create_import()
    ImportedContact.objects.create(job=job, line=99, email="stale@example.com", name="Stale", age=1)

    for _ in range(2):
        report, _ = reporter(tmp_path)
        assert run_csv_import(report, file=job.params["file"]) == {"rows": 5, "imported": 3, "errors": 2}

    assert list(ImportedContact.objects.filter(job=job).values_list("line", flat=True)) == [2, 5, 7]
    assert read_csv(tmp_path / "errors.csv") == GOOD_ERRORS  # overwritten, not appended


@pytest.mark.django_db
def test_run_of_a_header_only_file_imports_nothing_and_writes_the_report_header(tmp_path: Path) -> None:
    job = create_import(b"email,name,age\n")
    report, _ = reporter(tmp_path)
    assert run_csv_import(report, file=job.params["file"]) == {"rows": 0, "imported": 0, "errors": 0}
    assert read_csv(tmp_path / "errors.csv") == [["line", "column", "error"]]


@pytest.mark.django_db
def test_run_whose_upload_is_gone_fails_saying_so(tmp_path: Path) -> None:
    job = create_import()
    upload_path(job.params["file"]).unlink()
    report, _ = reporter(tmp_path)
    with pytest.raises(JobError, match="uploaded file is gone"):
        run_csv_import(report, file=job.params["file"])


@pytest.mark.django_db
def test_run_of_a_file_changed_since_upload_fails_naming_the_problem(tmp_path: Path) -> None:
    job = create_import()
    upload_path(job.params["file"]).write_bytes(b"mail,name\n")
    report, _ = reporter(tmp_path)
    with pytest.raises(JobError, match="missing the columns email, age"):
        run_csv_import(report, file=job.params["file"])


@pytest.mark.parametrize("stored", ["../etc/passwd", "results/x/errors.csv", "uploads/../../x.csv"])
def test_upload_path_refuses_a_path_outside_the_uploads(stored: str) -> None:
    with pytest.raises(ValueError, match="not an uploaded file's path"):
        upload_path(stored)


# --- purge ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_purge_removes_the_upload_and_the_imported_rows_with_the_job(tmp_path: Path, own_media_root: Path) -> None:
    job = create_import()
    ImportedContact.objects.create(job=job, line=2, email="a@example.com", name="A", age=1)
    long_ago = timezone.now() - timedelta(days=40)
    Job.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED, finished_at=long_ago)
    assert upload_dir(job.id).is_dir()

    report = job_purge_finished(older_than=timedelta(days=30))

    assert (report.jobs, report.directories) == (1, 1)
    assert not upload_dir(job.id).exists()
    assert not ImportedContact.objects.exists()


@pytest.mark.django_db
def test_purge_removes_an_old_upload_directory_without_a_job(own_media_root: Path) -> None:
    orphan = own_media_root / UPLOADS_DIR / "7b9c0e4e-0000-4000-8000-000000000000"
    orphan.mkdir(parents=True)
    (orphan / "contacts.csv").write_bytes(GOOD_CSV)
    long_ago = time.time() - 40 * 86400
    os.utime(orphan, (long_ago, long_ago))
    recent = create_import()

    assert job_purge_finished(older_than=timedelta(days=30)).directories == 1

    assert not orphan.exists()
    assert upload_dir(recent.id).is_dir()  # a queued job's upload is never touched


# --- on a real worker ------------------------------------------------------------------------

JOB_TIMEOUT = 30.0  # seconds: queued behind at most another test's short job


def test_import_on_a_worker_stores_rows_and_serves_the_error_report(worker: Any) -> None:
    client = Client()
    response = post_upload(client, csv_file())
    assert response.status_code == 201, response.content
    job_id = response.json()["id"]

    assert wait_until(lambda: Job.objects.get(pk=job_id).is_terminal, timeout=JOB_TIMEOUT)
    job = client.get(f"/api/jobs/{job_id}/").json()
    assert job["state"] == "succeeded", job
    assert job["result"] == {"rows": 5, "imported": 3, "errors": 2}
    assert job["progress"]["message"] == "imported 3 of 5 rows, 2 errors"
    assert (job["progress"]["current"], job["progress"]["total"]) == (5, 5)
    emails = list(ImportedContact.objects.filter(job_id=job_id).values_list("email", flat=True))
    assert emails == ["ada@example.com", "grace@example.com", "linus@example.com"]

    assert job["result_url"] == f"/api/jobs/{job_id}/result/"
    download = client.get(job["result_url"])
    assert download.status_code == 200
    assert 'filename="errors.csv"' in download["Content-Disposition"]
    assert read_csv(b"".join(download.streaming_content)) == GOOD_ERRORS  # type: ignore[attr-defined]
    assert Client().get(job["result_url"]).status_code == 404  # another visitor: no such job


# --- the admin ---------------------------------------------------------------------------------


@pytest.mark.django_db
def test_staff_see_imported_rows_in_the_admin_and_cannot_change_them(django_user_model: Any) -> None:
    job = create_import()
    row = ImportedContact.objects.create(job=job, line=2, email="ada@example.com", name="Ada Lovelace", age=36)
    staff = Client()
    staff.force_login(django_user_model.objects.create_superuser(username="boss", password="pw-for-tests-only"))

    listing = staff.get("/admin/jobs/importedcontact/", {"q": "ada@"}).content.decode()
    assert "ada@example.com" in listing and "Ada Lovelace" in listing
    assert staff.get("/admin/jobs/importedcontact/add/").status_code == 403
    change = staff.get(f"/admin/jobs/importedcontact/{row.pk}/change/")
    assert change.status_code == 200
    assert 'name="email"' not in change.content.decode()  # shown, not editable
    assert staff.post(f"/admin/jobs/importedcontact/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert ImportedContact.objects.filter(pk=row.pk).exists()
