"""Garbage-collector settings for the long-running processes (daphne, Celery workers).

CPython's cyclic collector stops the whole process while it walks the objects it
tracks, and a full (generation 2) walk visits every one: in daphne each walk is a pause
that the frames behind it wait out (docs/performance.md, "Fewer and shorter collector
pauses", has the figures). Two changes:

- `gc.freeze()` once the application is built: the objects of the imported code
  (Django, Channels, Twisted, the apps' modules), most of what a full walk visits, go to
  the permanent generation and are never walked again. They live as long as the process
  does, so no garbage is kept by it.
- A young-generation threshold of 10,000 instead of 700: a frame's dicts and bytes
  die by reference counting long before a collection sees them, so fewer in-flight
  objects are promoted to the old generations, whose growth is what triggers full
  walks. Cyclic garbage is still collected, a little later.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000  # allocations minus deallocations of tracked objects (default 700)
OLDER_THRESHOLDS = (20, 20)  # collections of the younger generation before an older one (default 10, 10)


def tune_after_startup() -> None:
    """Call once the process has imported and built what it keeps for its lifetime."""
    gc.collect()  # what start-up left as garbage is not frozen with the rest
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *OLDER_THRESHOLDS)
