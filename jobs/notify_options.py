"""What a submit asks to be told when its job ends: the `notify` field of POST /api/jobs/
(docs/contract.md#http) and the form's "Email me when it ends".

The field is an object with the one boolean key `email`, strict as a kind's parameters
are: `1` is not a boolean. Who may ask is the submit's check (jobs/services/submit.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from jobs.kinds import ParamsInvalid

NOTIFY_FIELD = "notify"
NOTIFY_KEYS = ("email",)
ANONYMOUS_NOTIFY_MESSAGE = "Sign in to be emailed when a job ends: an anonymous visitor has no email address."
NO_ADDRESS_NOTIFY_MESSAGE = "Your account has no email address: add one to be emailed when a job ends."
SHOWN_MAX = 60  # characters of a bad value quoted back in a message


@dataclass(frozen=True)
class NotifyOptions:
    email: bool = False  # a mail to the owner with the outcome and a link


NO_NOTIFY = NotifyOptions()


class NotifyInvalid(ParamsInvalid):
    """A `notify` field that is malformed, or that its owner may not ask for: a 400
    `{"errors": {"notify": [message]}}` wherever ParamsInvalid is answered."""

    def __init__(self, message: str) -> None:
        super().__init__({NOTIFY_FIELD: [message]})
        self.message = message


def notify_options_parse(value: object) -> NotifyOptions:
    """The `notify` field of a request (None when absent); NotifyInvalid naming what is wrong."""
    if value is None:
        return NO_NOTIFY
    if not isinstance(value, dict):
        raise NotifyInvalid(f'Must be an object like {{"email": true}}, not {_shown(value)}.')
    unknown = sorted(str(key) for key in value if key not in NOTIFY_KEYS)
    if unknown:
        raise NotifyInvalid(
            f"Unknown key(s) {', '.join(repr(key) for key in unknown)}; notify takes only {', '.join(NOTIFY_KEYS)}."
        )
    email = value.get("email", False)
    if not isinstance(email, bool):
        raise NotifyInvalid(f"notify.email must be true or false, not {_shown(email)}.")
    return NotifyOptions(email=email)


def _shown(value: object) -> str:
    """A JSON value as a message quotes it, cut short: a body may be 64 KiB."""
    text = json.dumps(value)
    return text if len(text) <= SHOWN_MAX else f"{text[: SHOWN_MAX - 1]}…"
