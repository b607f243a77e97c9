"""The HTML forms generated from each kind's parameters, and the form on `/`."""

from __future__ import annotations

import re

import pytest
from django.test import Client

from jobs.forms import KindForm, params_form
from jobs.kinds import JobKind, Param, kind_get, kind_list
from jobs.models import Job


def field_html(html: str, name: str) -> str:
    """The markup of the `<div>` that holds the input named `name`."""
    at = html.index(f'name="{name}"')
    start = html.rindex("<div", 0, at)
    return html[start : html.index("</div>", at)]


# --- params_form -----------------------------------------------------------------


@pytest.mark.parametrize("kind", kind_list(), ids=lambda kind: kind.name)
def test_params_form_renders_a_number_input_with_bounds_per_parameter(kind: JobKind) -> None:
    html = str(params_form(kind))
    for param in (p for p in kind.params if isinstance(p, Param)):  # files: tests/jobs/test_csv_import.py
        tag = re.search(rf'<input [^>]*name="{kind.name}-{param.name}"[^>]*>', html)
        assert tag is not None, param.name
        assert 'type="number"' in tag.group(0)
        assert f'min="{int(param.minimum)}"' in tag.group(0)
        assert f'max="{int(param.maximum)}"' in tag.group(0)
        assert f'step="{"1" if param.integer else "any"}"' in tag.group(0)


@pytest.mark.parametrize(("kind", "name", "maximum"), [("primes", "limit", "50000000"), ("report", "rows", "1000000")])
def test_params_form_writes_large_bounds_in_plain_digits(kind: str, name: str, maximum: str) -> None:
    tag = re.search(rf'<input [^>]*name="{kind}-{name}"[^>]*>', str(params_form(kind_get(kind))))
    assert tag is not None
    assert f'max="{maximum}"' in tag.group(0)  # not "5e+07"


def test_params_form_shows_defaults_as_initial_values() -> None:
    html = str(params_form(kind_get("primes")))
    assert re.search(r'<input [^>]*name="primes-limit"[^>]*value="5000000"', html)


def test_params_form_marks_only_parameters_without_default_required() -> None:
    form = params_form(kind_get("sleep"))
    assert [name for name, field in form.fields.items() if field.required] == []


def test_params_form_blank_field_cleans_to_the_default() -> None:
    form = params_form(kind_get("sleep"), {"sleep-steps": "", "sleep-step_seconds": " ", "sleep-fail_at_step": ""})
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {"steps": 10, "step_seconds": 0.5, "fail_at_step": None}


def test_params_form_parses_text_into_numbers() -> None:
    form = params_form(kind_get("sleep"), {"sleep-steps": "7", "sleep-step_seconds": "0.25", "sleep-fail_at_step": "3"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {"steps": 7, "step_seconds": 0.25, "fail_at_step": 3}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("primes-limit", "abc", "Must be an integer."),
        ("primes-limit", "1", "Must be between 2 and 50000000."),
        ("primes-limit", "2.5", "Must be an integer."),
    ],
)
def test_params_form_refuses_bad_text_with_the_message(field: str, value: str, message: str) -> None:
    form = params_form(kind_get("primes"), {field: value})
    assert not form.is_valid()
    assert form.errors == {"limit": [message]}


def test_kind_form_offers_every_kind() -> None:
    choices = KindForm().fields["kind"].choices  # type: ignore[attr-defined]
    assert [name for name, _ in choices] == [kind.name for kind in kind_list()]


# --- the form on / ---------------------------------------------------------------


def csrf_client() -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    response = client.get("/")
    assert response.status_code == 200
    return client, client.cookies["csrftoken"].value


def all_fields(**values: str) -> dict[str, str]:
    """What a browser posts: every kind's fields, blank unless given."""
    data = {
        f"{kind.name}-{param.name}": "" for kind in kind_list() for param in kind.params if isinstance(param, Param)
    }
    data.update(values)
    return data


@pytest.mark.django_db
def test_first_visit_to_the_index_sets_session_and_csrf_cookies(client: Client) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert "csrftoken" in response.cookies and "sessionid" in response.cookies


@pytest.mark.django_db
def test_posting_the_form_creates_the_job_and_redirects_to_it() -> None:
    client, token = csrf_client()
    response = client.post("/", all_fields(csrfmiddlewaretoken=token, kind="primes", **{"primes-limit": "1000"}))
    job = Job.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/#job-{job.id}"
    assert (job.kind, job.params, job.state) == ("primes", {"limit": 1000}, "queued")


@pytest.mark.django_db
def test_posting_the_form_with_blank_fields_takes_the_defaults_and_leaves_out_the_optional() -> None:
    client, token = csrf_client()
    fields = all_fields(csrfmiddlewaretoken=token, kind="sleep", **{"sleep-step_seconds": "0.25"})
    del fields["sleep-steps"]  # not posted at all: as blank
    response = client.post("/", fields)
    assert response.status_code == 302, response.content
    assert Job.objects.get().params == {"steps": 10, "step_seconds": 0.25}


@pytest.mark.django_db
def test_posted_job_belongs_to_the_visitor() -> None:
    client, token = csrf_client()
    client.post("/", all_fields(csrfmiddlewaretoken=token, kind="report"))
    job = Job.objects.get()
    assert job.params == {"rows": 100_000, "format": "csv", "include_refunds": False}
    assert client.get(f"/api/jobs/{job.id}/").status_code == 200
    assert Client().get(f"/api/jobs/{job.id}/").status_code == 404


@pytest.mark.django_db
def test_posting_the_form_without_csrf_token_is_refused() -> None:
    client, _ = csrf_client()
    response = client.post("/", all_fields(kind="primes"))
    assert response.status_code == 403
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_invalid_value_rerenders_the_form_with_400_and_the_error_by_the_field() -> None:
    client, token = csrf_client()
    response = client.post("/", all_fields(csrfmiddlewaretoken=token, kind="primes", **{"primes-limit": "abc"}))
    assert response.status_code == 400
    html = response.content.decode()
    assert "Must be an integer." in field_html(html, "primes-limit")
    assert 'value="abc"' in field_html(html, "primes-limit")  # what the visitor typed is kept
    assert not Job.objects.exists()


@pytest.mark.django_db
def test_invalid_value_of_another_kind_does_not_block_the_chosen_kind() -> None:
    client, token = csrf_client()
    data = all_fields(csrfmiddlewaretoken=token, kind="sleep", **{"primes-limit": "abc", "sleep-steps": "2"})
    assert client.post("/", data).status_code == 302
    assert Job.objects.get().params == {"steps": 2, "step_seconds": 0.5}


@pytest.mark.django_db
def test_unknown_kind_rerenders_the_form_with_400() -> None:
    client, token = csrf_client()
    response = client.post("/", all_fields(csrfmiddlewaretoken=token, kind="nope"))
    assert response.status_code == 400
    assert not Job.objects.exists()
