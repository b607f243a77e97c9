"""What the server-rendered job card (jobs/templates/jobs/_job_card.html) needs from a job."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django import template

from jobs.kinds import UnknownKind, kind_get
from jobs.models import TERMINAL_STATES

register = template.Library()


@register.filter
def param_pairs(job: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A job's parameters as (name, value) pairs, in the order its kind declares them.

    `params.items` in a template looks the key up first, so a kind with a parameter named
    `items` (pipeline) broke the card; and PostgreSQL's jsonb keeps keys shortest first,
    so the stored order is not the declared one."""
    params: Mapping[str, Any] = job.get("params") or {}
    try:
        declared = [param.name for param in kind_get(job.get("kind")).params]
    except UnknownKind:  # a kind no longer registered: its parameters by name
        declared = []
    order = {name: index for index, name in enumerate(declared)}
    return sorted(params.items(), key=lambda pair: (order.get(pair[0], len(order)), pair[0]))


@register.filter
def has_ended(job: Mapping[str, Any]) -> bool:
    """Whether the job is in a terminal state: its card offers "Run again" and "Edit and run"."""
    return job.get("state") in TERMINAL_STATES
