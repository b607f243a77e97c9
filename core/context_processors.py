"""Template context every page gets: the header's links."""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest


def header_links(request: HttpRequest) -> dict[str, str]:
    """FLOWER_URL for the "Flower" link in the page header (core/templates/base.html, for
    users with jobs.view_all_jobs), on every page, not only on the views that pass it."""
    return {"flower_url": settings.FLOWER_URL}
