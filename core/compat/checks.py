"""`manage.py check`: every patch's upstream is in the range the patch was tested for.

A safety patch out of range is an error (the check fails, as start-up would); a speed
patch out of range is a warning (it stays off and the stock behaviour is kept).
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Tags, Warning, register

from core.compat import web, worker
from core.compat.patch import Kind, Patch


def all_patches() -> list[Patch]:
    """Every patch, once, web and worker alike."""
    return list(dict.fromkeys((*web.PATCHES, *worker.PATCHES)))


@register(Tags.compatibility)
def check_patched_upstreams(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    for patch in all_patches():
        problem = patch.problem()
        if problem is None:
            continue
        if patch.kind is Kind.SAFETY:
            messages.append(
                Error(
                    f"{problem}.",
                    hint=f"Start-up stops: {patch.why}. Install the version pinned in requirements.txt.",
                    id="compat.E001",
                )
            )
        else:
            messages.append(
                Warning(
                    f"{problem}.",
                    hint=f"The patch stays off and the stock behaviour is kept: {patch.why}.",
                    id="compat.W001",
                )
            )
    return messages
