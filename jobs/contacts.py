"""The contacts CSV that the `csv_import` kind takes: its columns, its header check and
the validation of one row. Used by the web process (to refuse a bad file before a job
exists) and by the worker (to validate each row)."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TextIO

from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.core.validators import validate_email

CONTACT_COLUMNS = ("email", "name", "age")
NAME_MAX_LENGTH = 200
EMAIL_MAX_LENGTH = 254  # RFC 5321's limit on a forward path, as Django's EmailField
AGE_MIN, AGE_MAX = 0, 150
# Excel's "CSV UTF-8" starts with a byte order mark; utf-8-sig drops it and reads
# plain UTF-8 the same.
CSV_ENCODING = "utf-8-sig"
WHOLE_NUMBER = re.compile(r"[+-]?[0-9]{1,9}")


class ContactsFileInvalid(ValueError):
    """A contacts file that cannot be imported at all; the message is for users."""


@dataclass(frozen=True)
class Contact:
    line: int
    email: str
    name: str
    age: int


@dataclass(frozen=True)
class RowError:
    line: int
    column: str  # a column name, or "" for the row as a whole
    error: str


# --- the file ---------------------------------------------------------------------


def contacts_header(reader: Iterator[list[str]]) -> dict[str, int]:
    """Each column's index, from the reader's first row; raises ContactsFileInvalid.

    Names are matched without case or surrounding spaces; other columns are ignored.
    """
    try:
        header = next(reader)
    except StopIteration:
        columns = ", ".join(CONTACT_COLUMNS)
        raise ContactsFileInvalid(f"The file has no header line; it must start with {columns}.") from None
    names = [name.strip().lower() for name in header]
    for name in CONTACT_COLUMNS:
        if names.count(name) > 1:
            raise ContactsFileInvalid(f"The header names the column {name!r} twice.")
    missing = [name for name in CONTACT_COLUMNS if name not in names]
    if missing:
        found = ", ".join(repr(name) for name in header) or "nothing"
        raise ContactsFileInvalid(
            f"The header is missing the column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(it has {found}); the file must have the columns {', '.join(CONTACT_COLUMNS)}."
        )
    return {name: names.index(name) for name in CONTACT_COLUMNS}


def contacts_read(handle: TextIO) -> tuple[dict[str, int], Iterator[tuple[int, list[str]]]]:
    """The header's columns (read now) and an iterator of (line, fields) of every data
    row after it; blank lines are skipped.

    `line` is the line the row starts on (1 is the header), as an editor shows it.
    Raises ContactsFileInvalid for a header that does not fit or CSV it cannot read,
    the iterator too (at the row where reading fails).
    """
    reader = csv.reader(handle)
    try:
        columns = contacts_header(reader)
    except csv.Error as exc:
        raise ContactsFileInvalid(f"Line {reader.line_num} is not valid CSV: {exc}.") from None

    def rows() -> Iterator[tuple[int, list[str]]]:
        line = reader.line_num + 1
        try:
            for fields in reader:
                if fields:
                    yield line, fields
                line = reader.line_num + 1
        except csv.Error as exc:
            raise ContactsFileInvalid(f"Line {line} is not valid CSV: {exc}.") from None

    return columns, rows()


def contacts_file_check(upload: UploadedFile) -> None:
    """The web process's look at an uploaded contacts file: UTF-8, a header with the
    columns, CSV that reads to the end. Raises ContactsFileInvalid naming the problem.

    The file is read whole: its size is capped (CSV_IMPORT_MAX_BYTES) before this runs.
    """
    data = b"".join(upload.chunks())
    try:
        text = data.decode(CSV_ENCODING)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ContactsFileInvalid(
            f"The file is not UTF-8 text: line {line} holds the byte 0x{data[exc.start]:02x}. "
            "Save it as CSV UTF-8 and upload it again."
        ) from None
    with io.StringIO(text, newline="") as handle:
        _, rows = contacts_read(handle)
        for _ in rows:
            pass


# --- one row ----------------------------------------------------------------------


def contact_from_row(line: int, fields: list[str], columns: dict[str, int]) -> Contact | list[RowError]:
    """The row as a Contact, or every problem it has (one per column at most)."""
    errors: list[RowError] = []

    def field(name: str) -> str | None:
        index = columns[name]
        return fields[index].strip() if index < len(fields) else None

    email, name, age_text = field("email"), field("name"), field("age")
    if email is None or not email:
        errors.append(RowError(line, "email", "missing"))
    elif len(email) > EMAIL_MAX_LENGTH:
        errors.append(RowError(line, "email", f"longer than {EMAIL_MAX_LENGTH} characters"))
    else:
        try:
            validate_email(email)
        except ValidationError:
            errors.append(RowError(line, "email", f"{email!r} is not an email address"))
    if name is None or not name:
        errors.append(RowError(line, "name", "missing"))
    elif len(name) > NAME_MAX_LENGTH:
        errors.append(RowError(line, "name", f"longer than {NAME_MAX_LENGTH} characters ({len(name)})"))
    age: int | None = None
    if age_text is None or not age_text:
        errors.append(RowError(line, "age", "missing"))
    else:
        if not WHOLE_NUMBER.fullmatch(age_text):  # not int(): it takes "1_0" and other scripts' digits
            errors.append(RowError(line, "age", f"{age_text[:50]!r} is not a whole number"))
        elif not AGE_MIN <= int(age_text) <= AGE_MAX:
            errors.append(RowError(line, "age", f"{int(age_text)} is not between {AGE_MIN} and {AGE_MAX}"))
        else:
            age = int(age_text)
    if errors or email is None or name is None or age is None:
        return errors
    return Contact(line=line, email=email, name=name, age=age)


def rejection_text(errors: list[RowError]) -> str:
    """A rejected row's problems on one line: `email: 'x' is not an email address; age: missing`."""
    return "; ".join(f"{error.column}: {error.error}" if error.column else error.error for error in errors)
