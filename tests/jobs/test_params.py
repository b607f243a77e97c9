"""Typed parameters (jobs/params.py): each type validated strictly by pydantic, its inline
JSON Schema and its form input. The numbers' rules are in tests/jobs/test_kinds.py."""

from __future__ import annotations

import json
import re
from datetime import date
from typing import Any

import pytest

from jobs.forms import params_form
from jobs.kinds import JobKind, kind_get, kind_list
from jobs.params import BooleanParam, ChoiceParam, Param, StringParam, ValueParam

CODE = StringParam("code", "Code", min_length=2, max_length=5, pattern=r"^[a-z]+$", pattern_help="Lower-case letters.")
NOTE = StringParam("note", "Note", required=False)
EMAIL = StringParam("email", "Email", format="email")
SITE = StringParam("site", "Site", format="uri", required=False)
DAY = StringParam("day", "Day", format="date", required=False)
SHAPE = ChoiceParam("shape", "Shape", ("round", "square"), default="round")
COLOUR = ChoiceParam("colour", "Colour", ("red", "blue"), required=False)
LOUD = BooleanParam("loud", "Loud")


def run_every_type(report: Any, **params: Any) -> dict[str, Any]:
    return {"got": {name: repr(value) for name, value in params.items()}}


EVERY_TYPE = JobKind(
    name="every_type",
    title="Every type",
    description="",
    run=run_every_type,
    params=(Param("count", "Count", 1, 9, default=3), CODE, NOTE, EMAIL, SITE, DAY, SHAPE, COLOUR, LOUD),
)


@pytest.mark.parametrize(
    ("param", "value", "kept"),
    [
        (CODE, "abc", "abc"),
        (NOTE, "any text at all, ünïcode too", "any text at all, ünïcode too"),
        (EMAIL, "ana@example.com", "ana@example.com"),
        (SITE, "https://example.com", "https://example.com"),  # as written, no slash added
        (DAY, "2026-02-28", "2026-02-28"),
        (SHAPE, "square", "square"),
        (LOUD, True, True),
        (LOUD, False, False),
    ],
)
def test_clean_keeps_a_good_json_value(param: ValueParam, value: object, kept: object) -> None:
    assert param.clean(value) == kept


@pytest.mark.parametrize(
    ("param", "value", "message"),
    [
        (CODE, "a", "Must be at least 2 characters."),
        (CODE, "abcdef", "Must be at most 5 characters."),
        (CODE, "ABC", "Lower-case letters."),
        (CODE, 5, "Must be a string."),
        (NOTE, "x" * 1001, "Must be at most 1000 characters."),
        (NOTE, "nul\x00", "Must not contain a NUL character."),
        (NOTE, "\ud800", "Must be a string of valid Unicode (a lone surrogate is not)."),
        (EMAIL, "ana.example.com", "Must be an email address: An email address must have an @-sign."),
        (EMAIL, None, "Must be an email address, not null."),
        (SITE, "ftp://example.com", "Must be an http or https URL."),
        (SITE, "example", "Must be an http or https URL (relative URL without a base)."),
        (DAY, "2026-02-30", "Must be a date as YYYY-MM-DD, such as 2026-12-01 (day value is outside expected range)."),
        (DAY, 20260228, "Must be a date as YYYY-MM-DD, such as 2026-12-01."),
        (SHAPE, "oval", "Must be one of: round, square."),
        (SHAPE, 1, "Must be one of: round, square."),
        (SHAPE, None, 'Must be one of round, square, not null; leave it out to take the default, "round".'),
        (LOUD, 1, "Must be true or false."),
        (LOUD, "true", "Must be true or false."),
        (LOUD, None, "Must be true or false, not null; leave it out to take the default, false."),
    ],
)
def test_clean_refuses_a_bad_value_naming_what_it_must_be(param: ValueParam, value: object, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        param.clean(value)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("param", "text", "kept"),
    [
        (LOUD, "on", True),  # a ticked checkbox
        (LOUD, "true", True),
        (LOUD, "no", False),
        (LOUD, "", False),  # blank: the default
        (CODE, " abc ", "abc"),
        (DAY, "2026-01-31", "2026-01-31"),
        (DAY, " ", None),
        (COLOUR, "", None),
    ],
)
def test_clean_from_text_reads_form_and_command_line_text(param: ValueParam, text: str, kept: object) -> None:
    assert param.clean(text, from_text=True) == kept


def test_clean_from_text_refuses_a_word_that_is_not_true_or_false() -> None:
    with pytest.raises(ValueError, match="Must be true or false"):
        LOUD.clean("maybe", from_text=True)


def test_validate_fills_defaults_and_leaves_out_optional_parameters_without_one() -> None:
    assert EVERY_TYPE.validate({"code": "ab", "email": "a@example.com"}) == {
        "count": 3,
        "code": "ab",
        "email": "a@example.com",
        "shape": "round",
        "loud": False,
    }


def test_validate_names_each_bad_parameter_of_each_type() -> None:
    bad = {"count": "3", "code": 1, "email": "x", "site": "x", "day": "x", "shape": "x", "colour": "x", "loud": 0}
    with pytest.raises(Exception) as raised:
        EVERY_TYPE.validate(bad)
    assert sorted(raised.value.errors) == sorted(bad)  # type: ignore[attr-defined]


def test_arguments_give_the_kind_a_date_and_the_rest_as_kept() -> None:
    kept = EVERY_TYPE.validate({"code": "ab", "email": "a@example.com", "day": "2026-03-04", "loud": True})
    assert json.loads(json.dumps(kept)) == kept  # params stay JSON
    arguments = EVERY_TYPE.arguments(kept)
    assert arguments["day"] == date(2026, 3, 4)
    assert arguments["loud"] is True and arguments["code"] == "ab"


def test_a_string_format_other_than_email_uri_or_date_is_refused_at_declaration() -> None:
    with pytest.raises(ValueError, match="format must be one of email, uri, date"):
        StringParam("x", "X", format="colour")


# --- the schema ------------------------------------------------------------------


def test_schema_of_each_type_uses_the_contract_keywords() -> None:
    properties = EVERY_TYPE.schema()["properties"]
    assert properties["code"] == {
        "type": "string",
        "title": "Code",
        "minLength": 2,
        "maxLength": 5,
        "pattern": "^[a-z]+$",
    }
    assert properties["note"] == {"type": ["string", "null"], "title": "Note", "maxLength": 1000, "default": None}
    assert properties["email"] == {"type": "string", "format": "email", "title": "Email", "maxLength": 254}
    assert properties["site"]["format"] == "uri" and properties["site"]["type"] == ["string", "null"]
    assert properties["day"] == {"type": ["string", "null"], "format": "date", "title": "Day", "default": None}
    assert properties["shape"] == {"type": "string", "enum": ["round", "square"], "title": "Shape", "default": "round"}
    assert properties["loud"] == {"type": "boolean", "title": "Loud", "default": False}
    assert EVERY_TYPE.schema()["required"] == ["code", "email"]


def _keys(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {key for value in node.values() for key in _keys(value)}
    if isinstance(node, list):
        return {key for value in node for key in _keys(value)}
    return set()


@pytest.mark.parametrize("kind", [*kind_list(), EVERY_TYPE], ids=lambda kind: kind.name)
def test_every_schema_is_inline(kind: JobKind) -> None:
    assert not _keys(kind.schema()) & {"$ref", "$defs", "anyOf", "oneOf", "allOf"}


def test_the_built_in_kinds_declare_every_parameter_type() -> None:
    report = kind_get("report").schema()["properties"]
    assert report["format"]["enum"] == ["csv", "jsonl"]
    assert report["include_refunds"]["type"] == "boolean"
    assert report["since"]["format"] == "date"
    assert report["prepared_for"]["format"] == "email"
    assert report["region"]["pattern"]
    assert kind_get("sleep").schema()["properties"]["step_seconds"]["type"] == "number"


# --- the form --------------------------------------------------------------------


def _input(html: str, name: str) -> str:
    found = re.search(rf'<(input|select)[^>]*name="every_type-{name}"[^>]*>', html)
    assert found, name
    return found[0]


def test_the_form_gives_each_type_its_input() -> None:
    html = str(params_form(EVERY_TYPE))
    assert 'type="number"' in _input(html, "count")
    assert 'type="text"' in _input(html, "code") and 'maxlength="5"' in _input(html, "code")
    assert 'type="email"' in _input(html, "email")
    assert 'type="url"' in _input(html, "site")
    assert 'type="date"' in _input(html, "day")
    assert _input(html, "shape").startswith("<select")
    assert 'type="checkbox"' in _input(html, "loud")
    for name, kind in [("count", "integer"), ("code", "string"), ("shape", "enum"), ("loud", "boolean")]:
        assert f'data-param-type="{kind}"' in _input(html, name)


def test_an_optional_choice_without_default_offers_a_blank_option() -> None:
    html = str(params_form(EVERY_TYPE))
    assert '<option value="" selected>—</option>' in html.split('name="every_type-colour"')[1].split("</select>")[0]


def test_the_form_cleans_a_posted_form_into_json_params() -> None:
    posted = {
        "every_type-count": "4",
        "every_type-code": "abc",
        "every_type-email": "a@example.com",
        "every_type-day": "2026-05-06",
        "every_type-shape": "square",
        "every_type-loud": "on",
    }
    form = params_form(EVERY_TYPE, posted)
    assert form.is_valid(), form.errors
    assert EVERY_TYPE.validate({k: v for k, v in form.cleaned_data.items() if v is not None}) == {
        "count": 4,
        "code": "abc",
        "email": "a@example.com",
        "day": "2026-05-06",
        "shape": "square",
        "loud": True,
    }


def test_an_unticked_checkbox_is_false_and_a_bad_field_shows_its_message() -> None:
    form = params_form(EVERY_TYPE, {"every_type-code": "A", "every_type-email": "a@example.com"})
    assert not form.is_valid()
    assert form.errors["code"] == ["Must be at least 2 characters."]
    assert "loud" not in form.errors
