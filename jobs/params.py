"""A kind's parameters, each declared once: the pydantic type that validates a value
(strictly, as JSON: `"5"` is not a number, `1` is not a boolean), the inline JSON Schema
served at `/api/job-kinds/` and the field of the HTML form all come from it.

- `Param`: an integer or a number within bounds;
- `StringParam`: text with a length and a pattern, or an email address, a URI or a date
  (`format`);
- `ChoiceParam`: one of a list (`enum`, a select in the form);
- `BooleanParam`: true or false (a checkbox);
- `FileParam` (jobs/kinds.py): an uploaded file.

A value is kept in the job's params as JSON (a date as `YYYY-MM-DD`); `to_python` gives
the kind what the declaration says (a `datetime.date` for a date).
"""

from __future__ import annotations

import json
import math
from dataclasses import KW_ONLY, dataclass
from datetime import date
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal

from django import forms
from pydantic import AfterValidator, ConfigDict, EmailStr, Field, HttpUrl, TypeAdapter, ValidationError

STRICT = ConfigDict(strict=True)
STRING_FORMATS = ("email", "uri", "date")
STRING_MAX_LENGTH = 1000  # characters of a string parameter without a max_length of its own
DATE_EXAMPLE = "2026-12-01"


def _storable_text(text: str) -> str:
    # PostgreSQL's jsonb cannot hold U+0000: a job row with one would not be written.
    if "\x00" in text:
        raise ValueError("Must not contain a NUL character.")
    return text


@dataclass(frozen=True)
class ValueParam:
    """What every JSON-valued parameter shares: name, title, required or with a default.

    A parameter with `required=False` may be sent as `null` (its schema's `type` lists
    "null"); one left out takes its default, or is left out of the job's params when it
    has none.
    """

    name: str
    title: str
    _: KW_ONLY
    default: Any = None
    required: bool = True
    help: str = ""

    @property
    def type_name(self) -> str:
        """The schema's word for the type (`integer`, `string`…), on the form's input."""
        raise NotImplementedError

    @property
    def type_text(self) -> str:
        """The type as messages say it: "an integer", "a date as YYYY-MM-DD"."""
        raise NotImplementedError

    # --- the declaration's pieces, per type --------------------------------------------

    def annotation(self) -> Any:
        """The pydantic type a value must fit."""
        raise NotImplementedError

    def widget(self) -> forms.Widget:
        raise NotImplementedError

    def from_text(self, text: str) -> object:
        """A form field's (or the CLI's) text as the JSON value it stands for."""
        return text

    def prepare(self, value: object) -> object:
        """The JSON value as the type's rules read it, before pydantic checks it."""
        return value

    def message(self, error: Any, value: object) -> str:
        """What to tell the user about one pydantic error for `value`."""
        return f"Must be {self.type_text}."

    def to_json(self, value: Any, sent: object) -> object:
        """The validated value as kept in the job's params."""
        return value

    def to_python(self, value: object) -> object:
        """A kept value as the kind gets it."""
        return value

    # --- shared ------------------------------------------------------------------------

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.annotation(), config=STRICT)

    @property
    def is_required(self) -> bool:
        return self.required and self.default is None

    @property
    def nullable(self) -> bool:
        """Whether `null` is a value: only where the schema's `type` lists "null"."""
        return not self.required

    def absent(self) -> object:
        """The value of a parameter left out: its default, None (left out of params) for an
        optional one without a default; raises ValueError when it is required."""
        if self.is_required:
            raise ValueError("This parameter is required.")
        return self.default

    def clean(self, value: object, *, from_text: bool = False) -> object:
        """The value sent, checked as JSON by pydantic in strict mode; raises ValueError
        with a user message. Form fields arrive as text: a blank one counts as left out."""
        if from_text and (value is None or (isinstance(value, str) and not value.strip())):
            return self.absent()  # a form field left blank, or not posted
        if from_text and isinstance(value, str):
            value = self.from_text(value.strip())
        if value is None:
            if self.nullable:
                return self.default
            if self.default is None:
                raise ValueError(f"Must be {self.type_text}, not null.")
            shown = json.dumps(self.default) if isinstance(self.default, str | bool) else _number_text(self.default)
            raise ValueError(f"Must be {self.type_text}, not null; leave it out to take the default, {shown}.")
        value = self.prepare(value)
        try:
            document = json.dumps(value, allow_nan=True)
        except (TypeError, ValueError):
            raise ValueError(f"Must be {self.type_text}.") from None
        try:
            checked = self.adapter.validate_json(document, strict=True)
        except ValidationError as exc:
            raise ValueError(self.message(exc.errors()[0], value)) from None
        return self.to_json(checked, value)

    def json_schema(self) -> dict[str, Any]:
        """pydantic's schema of the value, inline, with the declaration's words beside it."""
        schema = dict(self.adapter.json_schema())
        if self.nullable:
            schema["type"] = [schema["type"], "null"]
        schema["title"] = self.title
        if self.help:
            schema["description"] = self.help
        if self.default is not None or self.nullable:
            schema["default"] = self.default
        return schema

    def form_field(self) -> forms.Field:
        param = self

        class ParamField(forms.Field):
            def clean(self, value: Any) -> Any:
                try:
                    return param.clean(value, from_text=True)
                except ValueError as exc:
                    raise forms.ValidationError(str(exc)) from None

        widget = self.widget()
        widget.attrs["data-param-type"] = self.type_name
        return ParamField(
            label=self.title, required=self.is_required, initial=self.default, help_text=self.help, widget=widget
        )


# --- numbers ---------------------------------------------------------------------


@dataclass(frozen=True)
class Param(ValueParam):
    """An integer (or, with `integer=False`, a number) between minimum and maximum."""

    minimum: float
    maximum: float
    _: KW_ONLY
    integer: bool = True

    @property
    def type_name(self) -> str:
        return "integer" if self.integer else "number"

    @property
    def type_text(self) -> str:
        return "an integer" if self.integer else "a number"

    def annotation(self) -> Any:
        if self.integer:
            return Annotated[int, Field(ge=self.minimum, le=self.maximum)]
        return Annotated[float, Field(ge=self.minimum, le=self.maximum, allow_inf_nan=False)]

    def prepare(self, value: object) -> object:
        # JSON Schema's "integer" is any number with no fractional part: 7.0 is 7.
        if self.integer and isinstance(value, float) and value.is_integer():
            return int(value)
        return value

    def to_json(self, value: Any, sent: object) -> object:
        return sent if isinstance(sent, int) else value  # a number sent as 5 stays 5

    def from_text(self, text: str) -> object:
        try:
            return int(text) if self.integer else float(text)
        except ValueError:
            raise ValueError(f"Must be {self.type_text}.") from None

    def message(self, error: Any, value: object) -> str:
        if error["type"] in ("greater_than_equal", "less_than_equal"):
            return f"Must be between {_number_text(self.minimum)} and {_number_text(self.maximum)}."
        if isinstance(value, float) and not math.isfinite(value):
            return "Must be a finite number."
        if isinstance(value, float) and self.integer:
            return "Must be a whole number."
        return f"Must be {self.type_text}."

    def widget(self) -> forms.Widget:
        attrs = {
            "min": _number_text(self.minimum),
            "max": _number_text(self.maximum),
            "step": "1" if self.integer else "any",
        }
        return forms.NumberInput(attrs=attrs)


def _number_text(value: float) -> str:
    """A bound as people and HTML read it: `50000000`, not `:g`'s `5e+07`."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


# --- text ------------------------------------------------------------------------


@dataclass(frozen=True)
class StringParam(ValueParam):
    """Text: at most `max_length` characters (and at least `min_length`), matching
    `pattern` (a regular expression searched in the text: anchor it with ^…$), or one of
    the `format`s email, uri (http or https) or date (YYYY-MM-DD; the kind gets a
    `datetime.date`). `pattern_help` says in words what the pattern wants."""

    _: KW_ONLY
    min_length: int | None = None
    max_length: int | None = None
    pattern: str | None = None
    pattern_help: str = ""
    format: str | None = None

    @property
    def type_name(self) -> str:
        return "string"

    def __post_init__(self) -> None:
        if self.format is not None and self.format not in STRING_FORMATS:
            raise ValueError(f"StringParam {self.name!r}: format must be one of {', '.join(STRING_FORMATS)}.")

    @property
    def type_text(self) -> str:
        return {
            "email": "an email address",
            "uri": "an http or https URL",
            "date": f"a date as YYYY-MM-DD, such as {DATE_EXAMPLE}",
        }.get(self.format or "", "a string")

    def annotation(self) -> Any:
        if self.format == "date":
            return date
        if self.format == "email":
            return Annotated[EmailStr, Field(max_length=self.max_length or 254)]
        if self.format == "uri":
            return HttpUrl
        constraints = Field(
            min_length=self.min_length, max_length=self.max_length or STRING_MAX_LENGTH, pattern=self.pattern
        )
        return Annotated[str, constraints, AfterValidator(_storable_text)]

    def message(self, error: Any, value: object) -> str:
        kind = error["type"]
        if kind == "string_too_short":
            return f"Must be at least {error['ctx']['min_length']} characters."
        if kind == "string_too_long":
            return f"Must be at most {error['ctx']['max_length']} characters."
        if kind == "string_pattern_mismatch":
            return self.pattern_help or f"Must match the pattern {self.pattern}."
        if kind == "json_invalid":
            return f"Must be {self.type_text} of valid Unicode (a lone surrogate is not)."
        if kind == "value_error" and self.format == "email":
            return f"Must be an email address: {error.get('ctx', {}).get('reason', 'this is not one.')}"
        if kind == "value_error":
            return str(error.get("ctx", {}).get("error", error["msg"]))
        if kind in ("date_parsing", "url_parsing") and "error" in error.get("ctx", {}):
            return f"Must be {self.type_text} ({error['ctx']['error']})."
        return f"Must be {self.type_text}."

    def to_json(self, value: Any, sent: object) -> object:
        if self.format == "date":
            return value.isoformat()
        if self.format == "uri":
            return sent  # as written: pydantic's URL adds a trailing slash
        return value

    def to_python(self, value: object) -> object:
        if self.format == "date" and isinstance(value, str):
            return date.fromisoformat(value)
        return value

    def widget(self) -> forms.Widget:
        attrs: dict[str, Any] = {}
        if self.max_length:
            attrs["maxlength"] = str(self.max_length)
        if self.format == "date":
            return forms.DateInput(attrs={**attrs, "type": "date"}, format="%Y-%m-%d")
        if self.format == "email":
            return forms.EmailInput(attrs=attrs)
        if self.format == "uri":
            return forms.URLInput(attrs=attrs)
        return forms.TextInput(attrs=attrs)


# --- one of a list ---------------------------------------------------------------


@dataclass(frozen=True)
class ChoiceParam(ValueParam):
    """One of `choices` (strings); `labels` are what the form's select shows."""

    choices: tuple[str, ...]
    _: KW_ONLY
    labels: tuple[str, ...] = ()

    @property
    def type_name(self) -> str:
        return "enum"

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError(f"ChoiceParam {self.name!r} needs at least one choice.")
        if self.labels and len(self.labels) != len(self.choices):
            raise ValueError(f"ChoiceParam {self.name!r}: one label per choice.")

    @property
    def type_text(self) -> str:
        return "one of " + ", ".join(self.choices)

    def annotation(self) -> Any:
        return Literal[self.choices]

    def message(self, error: Any, value: object) -> str:
        return f"Must be one of: {', '.join(self.choices)}."

    def widget(self) -> forms.Widget:
        options = list(zip(self.choices, self.labels or self.choices, strict=True))
        if not self.is_required and self.default is None:
            options.insert(0, ("", "—"))
        return forms.Select(choices=options)


# --- true or false ---------------------------------------------------------------


@dataclass(frozen=True)
class BooleanParam(ValueParam):
    """True or false: a checkbox in the form (left unticked is false)."""

    _: KW_ONLY
    default: Any = False

    @property
    def type_name(self) -> str:
        return "boolean"

    @property
    def type_text(self) -> str:
        return "true or false"

    TRUE_TEXT: ClassVar[frozenset[str]] = frozenset({"true", "on", "yes", "1"})
    FALSE_TEXT: ClassVar[frozenset[str]] = frozenset({"false", "off", "no", "0"})

    def annotation(self) -> Any:
        return bool

    def from_text(self, text: str) -> object:
        lowered = text.lower()
        if lowered in self.TRUE_TEXT:
            return True
        if lowered in self.FALSE_TEXT:
            return False
        raise ValueError("Must be true or false.")

    def widget(self) -> forms.Widget:
        return forms.CheckboxInput()

    def form_field(self) -> forms.Field:
        field = super().form_field()
        field.required = False  # an unticked box is false, not missing
        return field
