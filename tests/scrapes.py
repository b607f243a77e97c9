"""Reading a Prometheus scrape in tests: parsed with prometheus_client's own parser."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.environment import TEST_METRICS_TOKEN

Key = tuple[str, tuple[tuple[str, str], ...]]


@dataclass(frozen=True)
class Scrape:
    """Every sample of one scrape: (sample name, sorted labels) -> value."""

    samples: dict[Key, float]
    families: frozenset[str]

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[Key, float] = {}
        families = set()
        for family in text_string_to_metric_families(text):
            families.add(family.name)
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(samples, frozenset(families))

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 for a series not (yet) there."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name: str, **labels: str) -> bool:
        return (name, tuple(sorted(labels.items()))) in self.samples


def scrape(url: str, *, token: str | None = TEST_METRICS_TOKEN, timeout: float = 10.0) -> Scrape:
    """GET <url> (a daphne's /metrics or a worker's port), parsed; raises unless 200."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(url, headers=headers, timeout=timeout)
    response.raise_for_status()
    return Scrape.parse(response.text)


async def ascrape(client: httpx.AsyncClient, url: str, *, token: str | None = TEST_METRICS_TOKEN) -> Scrape:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get(url, headers=headers)
    response.raise_for_status()
    return Scrape.parse(response.text)
