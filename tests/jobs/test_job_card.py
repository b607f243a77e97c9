"""The server-rendered job card (jobs/templates/jobs/_job_card.html), on `/` and `/jobs/<id>/`."""

from __future__ import annotations

import pytest
from django.test import Client
from django.utils import timezone

from jobs.models import Job
from jobs.owners import SESSION_OWNER_KEY

pytestmark = pytest.mark.django_db


def test_a_parameter_named_items_shows_on_the_card_of_both_pages() -> None:
    client = Client()
    assert client.get("/").status_code == 200  # the visitor's session
    now = timezone.now()
    job = Job.objects.create(
        kind="pipeline",
        params={"items": 50000, "seed": 1},
        seq=1,
        created_at=now,
        updated_at=now,
        owner_token=client.session[SESSION_OWNER_KEY],
    )
    for path in ("/", f"/jobs/{job.id}/"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert "items 50000 · seed 1" in response.content.decode(), path
