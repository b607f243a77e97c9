from __future__ import annotations

from django.urls import path, re_path

from notifications.consumers import JobConsumer, OwnerJobsConsumer, StaffJobsConsumer, UnknownPathConsumer

websocket_urlpatterns = [
    path("ws/jobs/", OwnerJobsConsumer.as_asgi()),
    path("ws/staff/jobs/", StaffJobsConsumer.as_asgi()),  # the staff live view
    # Any id reaches the consumer, which answers a malformed one with close 4404
    # (an unrouted path would fail the handshake with no code at all).
    re_path(r"^ws/jobs/(?P<job_id>[^/]{1,100})/$", JobConsumer.as_asgi()),
    re_path(r"", UnknownPathConsumer.as_asgi()),  # every other path: 4404, never a 500
]
