"""Settings the page's script needs, written into the page (jobs/static/jobs/resync.js)."""

from __future__ import annotations

from django import template
from django.conf import settings

register = template.Library()


@register.simple_tag
def stream_resync_seconds() -> str:
    """STREAM_RESYNC_SECONDS, for `<body data-stream-resync-seconds>`."""
    return f"{settings.STREAM_RESYNC_SECONDS:g}"
