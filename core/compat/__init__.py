"""Every change jobstream makes to an upstream package's behaviour, one module per upstream.

Product code outside this package uses only the public APIs of its dependencies (a test,
tests/test_boundaries.py, checks it). Each patch here says what it changes and why, and
is declared as a `Patch` (core/compat/patch.py) with the version range it was written and
tested for, checked when the process starts (`web.install()` in daphne, `worker.install()`
in Celery processes) and by `manage.py check`:

- speed patches, outside their range, log one warning and leave the stock behaviour in
  place: the product works, slower;
- safety patches (the contract or the process's survival depends on them), outside their
  range, stop start-up naming the package, its version and the range.

twisted        write-through (speed), the unsent-bytes bound, a request's head and body (safety)
autobahn       plain log labels, framed once (speed)
daphne         close code 1009, the unsent bound, bodies checked from the head, HTTP back-pressure (safety);
               the protocol behind a send (speed)
channels       the consumer fast path (speed)
channels_redis jobstream's channel layer (speed)
kombu          closed-channel guards (safety); the Redis message layout (speed)
django         SQLite's writer queue (speed)

docs/compat.md lists them with their ranges and canary tests (tests/core/compat/).
"""
