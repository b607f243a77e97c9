"""What the server-rendered job card (jobs/templates/jobs/_job_card.html) needs from a job."""

from __future__ import annotations

from typing import Any

from django import template

register = template.Library()


@register.filter
def param_pairs(params: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """A job's parameters as (name, value) pairs. `params.items` in a template looks the
    key up first, so a kind with a parameter named `items` (pipeline) broke the card."""
    return list((params or {}).items())
