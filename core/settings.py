"""jobstream settings, grouped in blocks and read from the environment.

Defaults fail closed: DEBUG is off unless set (`make run` sets it for development), and
outside DEBUG start-up stops without a SECRET_KEY. The rest defaults to SQLite and the
local Redis; production sets the variables in the README.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import dj_database_url
from celery.schedules import crontab

from core.email_url import email_settings_from_url, site_url_check
from core.metrics_settings import metrics_settings_from_env
from core.redis_topology import redis_topology_from_env
from jobs.task_names import CLEAR_SESSIONS_TASK, PURGE_FINISHED_TASK, SWEEP_TASK

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


# --- Core ------------------------------------------------------------------------

DEBUG = env_bool("DEBUG", False)  # off unless set: a forgotten variable must not serve tracebacks
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError(
            "SECRET_KEY must be set when DEBUG is false. DEBUG is false unless set; "
            "for development run `make run` (it sets DEBUG=true) or set DEBUG=true yourself."
        )
    SECRET_KEY = "dev-only-insecure-key-change-me-0123456789-abcdefghijklmnopqrstuvwxyz"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")
# The proxies whose X-Forwarded-For is believed (addresses or CIDR networks, comma-
# separated; none by default): the client address is then the rightmost untrusted hop.
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", "")
for _proxy in TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise RuntimeError(
            f"TRUSTED_PROXIES: {_proxy!r} is not an IP address or CIDR network (e.g. 10.0.0.5 or 10.0.0.0/8)."
        ) from None

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "core.compat",  # the version check of the patched upstreams (manage.py check)
    "jobs",
    "notifications",
]


def _module_found(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, an empty name part
        return False


def env_apps(name: str) -> list[str]:
    """Apps named in the environment, comma-separated: dotted module paths, or the path of
    an AppConfig class as INSTALLED_APPS takes them. One that cannot be imported stops
    start-up naming it."""
    apps = env_list(name, "")
    for app in apps:
        module, _, attribute = app.rpartition(".")
        if _module_found(app) or (
            module and _module_found(module) and hasattr(importlib.import_module(module), attribute)
        ):
            continue
        raise RuntimeError(
            f"{name}: the app {app!r} cannot be imported; list apps by their dotted module path, "
            "comma-separated, with their folder on PYTHONPATH (e.g. examples.greetings)."
        )
    return apps


# Apps added without editing this file (comma-separated): each app's `jobkinds.py` is
# imported at start-up (jobs/apps.py), so its kinds run in web and workers alike.
JOBSTREAM_EXTRA_APPS = env_apps("JOBSTREAM_EXTRA_APPS")
INSTALLED_APPS += JOBSTREAM_EXTRA_APPS

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.api_errors.api_errors_middleware",  # django-ninja's plain-text 405 in the API's error shape
]

ROOT_URLCONF = "core.urls"
WSGI_APPLICATION = "core.wsgi.application"
ASGI_APPLICATION = "core.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "core" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.header_links",
            ],
        },
    },
]

# --- Database --------------------------------------------------------------------
# DATABASE_URL switches to PostgreSQL (postgres://user@host:5432/name); SQLite otherwise.
# The SQLite test database is a file, not memory: the live daphne process of the
# end-to-end tests must see the rows the tests write.

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
        # 0: under ASGI, Django runs each request's sync code in a thread of its own, so
        # a connection kept past the request is never reused, only leaked.
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's SQLite backend, with a process's write transactions queued in Python rather
    # than in SQLite's sleeping busy handler (core/compat/django).
    DATABASES["default"]["ENGINE"] = "core.compat.django"
    # Workers, daphne and the tests write the same file: wait for the lock instead of
    # failing with "database is locked".
    # WAL lets readers (daphne) run beside the writer (a worker); synchronous=NORMAL is
    # safe under WAL and spares an fsync per progress write; IMMEDIATE transactions take
    # the write lock up front instead of failing to upgrade a read lock.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 20
    DATABASES["default"]["OPTIONS"]["init_command"] = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
    DATABASES["default"]["OPTIONS"]["transaction_mode"] = "IMMEDIATE"
    # One file per test run, so two runs in one checkout never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "var" / f"test-db-{os.getpid()}.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth and sessions -----------------------------------------------------------

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/"
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"

# --- Static and uploaded files ---------------------------------------------------

STATIC_URL = "/static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", str(BASE_DIR / "media")))
# whitenoise serves static files; from the apps' folders directly in development, from
# STATIC_ROOT (collectstatic) in production.
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", DEBUG)
WHITENOISE_AUTOREFRESH = DEBUG
MEDIA_URL = "/media/"  # never served directly: results go through the owner check
# The proxy's internal location serving MEDIA_ROOT (e.g. /_results/): a result download,
# once its owner is checked, is handed to it (X-Accel-Redirect); empty, daphne streams it.
RESULT_ACCEL_REDIRECT = os.environ.get("RESULT_ACCEL_REDIRECT", "")
if RESULT_ACCEL_REDIRECT and not (RESULT_ACCEL_REDIRECT.startswith("/") and RESULT_ACCEL_REDIRECT.endswith("/")):
    raise RuntimeError(f"RESULT_ACCEL_REDIRECT must start and end with '/' (/_results/): {RESULT_ACCEL_REDIRECT!r}.")
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024  # a job request is small; docs/contract.md#errors: 413 past 64 KiB
# The largest CSV a csv_import job takes (jobs/builtin_kinds.py): the web process reads
# an upload whole to check it before a job exists, so this bounds that memory too.
CSV_IMPORT_MAX_BYTES = env_int("CSV_IMPORT_MAX_BYTES", 5 * 1024 * 1024)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Redis, channel layer, Celery ------------------------------------------------

# Where Redis is (core/redis_topology.py): REDIS_URL alone; CHANNEL_REDIS_URLS, shards
# of the channel layer; or REDIS_SENTINELS (with REDIS_SENTINEL_MASTER, REDIS_PASSWORD,
# REDIS_SENTINEL_PASSWORD, REDIS_DB), a Sentinel-managed master for every use of Redis.
REDIS_TOPOLOGY = redis_topology_from_env(os.environ)
REDIS_URL = REDIS_TOPOLOGY.redis_url
# The Redis of what does not shard (socket quotas, health), as a channels-redis host:
# {"address": REDIS_URL}, or the Sentinel master.
REDIS_HOST = REDIS_TOPOLOGY.main_host()


CHANNEL_LAYER_BACKENDS = {
    # The pub/sub layer publishes a group message once and every daphne process that has
    # a member receives it once; the core layer's per-process list drops frames past its
    # capacity of 100 (logged only at INFO), which a progress stream cannot afford.
    "pubsub": "core.compat.channels_redis.JobStreamChannelLayer",
    "stock-pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",  # stock, for the benchmarks' baseline
}
CHANNEL_LAYER = os.environ.get("CHANNEL_LAYER", "pubsub")


def channel_layers_for(
    redis: str | Sequence[str | Mapping[str, object]], backend: str = CHANNEL_LAYER
) -> dict[str, dict[str, object]]:
    """The channel layer config for a Redis URL, or for shards: URLs and channels-redis
    host dicts, in shard order (the tests point it at their own Redis)."""
    if backend not in CHANNEL_LAYER_BACKENDS:
        raise RuntimeError(f"CHANNEL_LAYER must be one of {', '.join(CHANNEL_LAYER_BACKENDS)}, not {backend!r}.")
    shards: list[str | Mapping[str, object]] = [redis] if isinstance(redis, str) else list(redis)
    hosts: list[dict[str, object]] = [{"address": s} if isinstance(s, str) else dict(s) for s in shards]
    return {"default": {"BACKEND": CHANNEL_LAYER_BACKENDS[backend], "CONFIG": {"hosts": hosts}}}


CHANNEL_LAYERS = channel_layers_for(REDIS_TOPOLOGY.channel_hosts())

# The longest hard time limit of any kind is 2 h (jobs/kinds.py); a Redis broker
# redelivers an unacknowledged task only after visibility_timeout, so it must exceed
# that or a long job runs twice.
LONGEST_HARD_TIME_LIMIT = 2 * 60 * 60
# Each follows the Sentinels when REDIS_SENTINELS is set, unless set explicitly.
_broker = REDIS_TOPOLOGY.celery(os.environ.get("CELERY_BROKER_URL"))
_results = REDIS_TOPOLOGY.celery(os.environ.get("CELERY_RESULT_BACKEND"))
CELERY_BROKER_URL = _broker.url
CELERY_RESULT_BACKEND = _results.url
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = _results.transport_options
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": LONGEST_HARD_TIME_LIMIT + 600,
    # Without it kombu waits for the OS (minutes) to give up on an unreachable broker; a
    # submit must answer at once, and the sweeper sends what could not go (jobs/services/submit.py).
    "socket_connect_timeout": 3,
    **_broker.transport_options,
}
CELERY_RESULT_EXPIRES = 24 * 60 * 60
# One result backend per worker process, not one per thread: Celery otherwise builds one
# in each thread of the `threads` pool on its first task (a Redis client and a package
# metadata lookup), all in the second in which many jobs end together, while others still
# tick (docs/performance.md, "What a job's end costs"). redis-py's client is thread-safe.
CELERY_RESULT_BACKEND_THREAD_SAFE = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1  # a slow job must not hold queued jobs hostage
CELERY_TASK_SEND_SENT_EVENT = True  # Flower sees tasks from the moment they are sent
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_TRACK_STARTED = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TIMEZONE = TIME_ZONE
CELERY_WORKER_POOL = os.environ.get("CELERY_WORKER_POOL", "prefork")
CELERY_WORKER_CONCURRENCY = env_int("CELERY_WORKER_CONCURRENCY", 4)

# --- Fault recovery: lost workers, lost dispatches (docs/architecture.md) ------------
# A worker that dies with its job (SIGKILL, OOM, a lost host) leaves the row `running`.
# If only the pool's child died, Celery hands the task back at once (acks_late +
# reject_on_worker_lost) and the job restarts; if the whole worker died, its task is
# redelivered only after visibility_timeout (above, over 2 h), so the sweeper (Celery
# beat runs `jobs.sweep`) finds the job by its heartbeat and sends it again.
JOB_MAX_ATTEMPTS = env_int("JOB_MAX_ATTEMPTS", 3)  # runs of a job, lost workers included, before it fails
JOB_HEARTBEAT_INTERVAL = float(os.environ.get("JOB_HEARTBEAT_INTERVAL", "5"))  # seconds between a job's heartbeats
JOB_STALE_AFTER = float(os.environ.get("JOB_STALE_AFTER", "30"))  # seconds of silence before a job counts as lost
JOB_SWEEP_INTERVAL = float(os.environ.get("JOB_SWEEP_INTERVAL", "15"))  # seconds between sweeps
# Seconds a sent job may wait queued before the sweep looks for its message in the broker
# (a Redis without persistence loses its queue when it restarts). A queued job normally
# waits there for a free worker: the look costs a read of the queue, so only jobs
# waiting this long are looked for (jobs/broker.py).
JOB_REQUEUE_AFTER = float(os.environ.get("JOB_REQUEUE_AFTER", "60"))
if JOB_MAX_ATTEMPTS < 1:
    raise RuntimeError(f"JOB_MAX_ATTEMPTS must be 1 or more, not {JOB_MAX_ATTEMPTS}.")
if JOB_HEARTBEAT_INTERVAL <= 0 or JOB_SWEEP_INTERVAL <= 0:
    raise RuntimeError("JOB_HEARTBEAT_INTERVAL and JOB_SWEEP_INTERVAL must be above 0 seconds.")
if not 0 < JOB_REQUEUE_AFTER < float("inf"):  # NaN too: it would make every sweep fail
    raise RuntimeError(f"JOB_REQUEUE_AFTER must be a number of seconds above 0, not {JOB_REQUEUE_AFTER:g}.")
if JOB_STALE_AFTER < 2 * JOB_HEARTBEAT_INTERVAL:
    # One late heartbeat (a busy database, a pause of the process) must not fail a job.
    raise RuntimeError(
        f"JOB_STALE_AFTER ({JOB_STALE_AFTER:g} s) must be at least twice JOB_HEARTBEAT_INTERVAL "
        f"({JOB_HEARTBEAT_INTERVAL:g} s): raise it or beat more often."
    )
CELERY_BEAT_SCHEDULE = {
    SWEEP_TASK: {
        "task": SWEEP_TASK,
        "schedule": JOB_SWEEP_INTERVAL,
        # A sweep still waiting for a worker when the next one is due is dropped, so
        # sweeps never pile up behind busy or absent workers.
        "options": {"expires": JOB_SWEEP_INTERVAL},
    },
    PURGE_FINISHED_TASK: {  # retention (JOB_RETENTION_DAYS): once a day, at a quiet hour
        "task": PURGE_FINISHED_TASK,
        "schedule": crontab(hour=3, minute=17),
        "options": {"expires": 60 * 60},
    },
    CLEAR_SESSIONS_TASK: {  # expired sessions (Django never deletes them itself): once a day
        "task": CLEAR_SESSIONS_TASK,
        "schedule": crontab(hour=3, minute=47),
        "options": {"expires": 60 * 60},
    },
}

# --- jobstream -------------------------------------------------------------------

PROGRESS_MAX_RATE = float(os.environ.get("PROGRESS_MAX_RATE", "10"))  # frames/s per job
# How a frame leaves a process: empty for jobstream's publisher (notifications/publish.py),
# else the dotted path of a `send(groups, message)` callable (the benchmarks' baseline,
# bench/naive_publisher.py).
JOBSTREAM_PUBLISHER = os.environ.get("JOBSTREAM_PUBLISHER", "")
FLOWER_URL = os.environ.get("FLOWER_URL", "http://127.0.0.1:5555/flower/")
JOB_LIST_PAGE_SIZE = 20


# --- Metrics (docs/deploy.md#metrics) -------------------------------------------------
# /metrics answers users with jobs.view_metrics, and a scraper sending
# `Authorization: Bearer $METRICS_TOKEN` (unset: no token is accepted). A worker host
# serves its workers' figures on WORKER_METRICS_PORT (unset: off); with the prefork pool
# its children write them to PROMETHEUS_MULTIPROC_DIR (core/worker_metrics.py).
_metrics = metrics_settings_from_env(os.environ)
METRICS_TOKEN = _metrics.token
WORKER_METRICS_PORT = _metrics.worker_port
WORKER_METRICS_ADDRESS = _metrics.worker_address
PROMETHEUS_MULTIPROC_DIR = _metrics.multiprocess_dir

# --- Mail (docs/contract.md#email) --------------------------------------------------
# EMAIL_URL names the server (core/email_url.py): smtp://user:pass@host:587/?tls=true,
# smtps://user:pass@host/, console:// or locmem://. Unset, mails go to the process's
# standard output (the console backend, as under `make run`): nothing leaves the machine
# until an operator names a server. SITE_URL starts the links in mails.
try:
    _email = email_settings_from_url(os.environ.get("EMAIL_URL", ""))
except ValueError as exc:
    raise RuntimeError(f"EMAIL_URL: {exc}.") from None
EMAIL_BACKEND = _email.backend
EMAIL_HOST = _email.host
EMAIL_PORT = _email.port
EMAIL_HOST_USER = _email.user
EMAIL_HOST_PASSWORD = _email.password
EMAIL_USE_TLS = _email.use_tls
EMAIL_USE_SSL = _email.use_ssl
# Seconds an SMTP server may take to answer: a mail is sent by the worker that ended the
# job (or the web process that cancelled it), which must not hang on a server gone quiet.
EMAIL_TIMEOUT = 10
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "jobstream@localhost")
try:
    SITE_URL = site_url_check(os.environ.get("SITE_URL", "http://127.0.0.1:8000"))
except ValueError as exc:
    raise RuntimeError(f"SITE_URL: {exc}, not {os.environ.get('SITE_URL')!r}.") from None

# --- Quotas and retention --------------------------------------------------------
# Per owner: a signed-in user, or an anonymous session (jobs/owners.py). 0 turns a quota
# off; staff are exempt. Job quotas: jobs/quotas.py; the socket quota:
# notifications/socket_quota.py.


def env_count(name: str, default: int) -> int:
    """A whole number >= 0 from the environment; a bad value stops start-up naming it."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit():
        raise RuntimeError(f"{name} must be a whole number of 0 or more (0 turns it off), not {raw!r}.")
    return int(raw)


JOB_QUOTA_ACTIVE = env_count("JOB_QUOTA_ACTIVE", 10)  # jobs queued or running at once
JOB_QUOTA_PER_MINUTE = env_count("JOB_QUOTA_PER_MINUTE", 30)  # jobs started in any 60 s: 429 + Retry-After
JOB_QUOTA_SOCKETS = env_count("JOB_QUOTA_SOCKETS", 50)  # WebSockets and SSE streams open at once: 4429 / 429
# Fair share (jobs/services/fair_share.py): jobs of one owner running at once; the others
# wait queued, out of the workers' way. Half the worker slots by default, so one owner
# never holds them all. Web (queue_position) and worker (the start) read the same value.
JOB_QUOTA_RUNNING = env_count("JOB_QUOTA_RUNNING", max(1, CELERY_WORKER_CONCURRENCY // 2))
# Jobs queued or running at once from one client address (core/client_address.py), over
# every owner there: a fresh cookie does not buy a fresh quota. An IPv6 client counts by
# its /64, what one subscriber is usually given.
JOB_QUOTA_PER_IP = env_count("JOB_QUOTA_PER_IP", 20)
# Storage per owner (jobs/storage_quota.py): a submit at a quota gets 429, a job that
# would pass it fails and keeps nothing. 512 MiB holds ten of the largest reports (1,000,000
# rows, ~49 MB); 1,000,000 rows is ten imports of the largest file (5 MiB, ~100k rows).
JOB_QUOTA_RESULT_BYTES = env_count("JOB_QUOTA_RESULT_BYTES", 512 * 1024 * 1024)  # bytes of result files
JOB_QUOTA_IMPORT_ROWS = env_count("JOB_QUOTA_IMPORT_ROWS", 1_000_000)  # rows of csv_import jobs
# WebSockets and SSE streams open at once per client address (core/client_address.py), over
# every daphne: 4429 / 429. Counts anonymous visitors however many cookies they take.
STREAM_QUOTA_PER_IP = env_count("STREAM_QUOTA_PER_IP", 200)
# Finished jobs and their result files are purged this many days after they ended
# (the `jobs.purge_finished` task; `manage.py jobs purge`); 0 keeps them for ever.
JOB_RETENTION_DAYS = env_count("JOB_RETENTION_DAYS", 30)
# The same for anonymous owners' jobs: nobody can come back to them once the session is gone.
JOB_RETENTION_DAYS_ANONYMOUS = env_count("JOB_RETENTION_DAYS_ANONYMOUS", 1)
# A job keeps the last this many lines of its log (jobs/logs.py); older ones are dropped.
JOB_LOG_MAX_LINES = env_count("JOB_LOG_MAX_LINES", 10_000)
if JOB_LOG_MAX_LINES < 1:
    raise RuntimeError("JOB_LOG_MAX_LINES must be 1 or more: a job keeps at least the last line of its log.")

# --- Security (`manage.py check --deploy`) ------------------------------------------
# Session cookie: HttpOnly, SameSite=Lax, Secure unless DEBUG (Auth and sessions above).
# The CSRF cookie stays readable by the page's script, which echoes it in X-CSRFToken
# (Django: HttpOnly on it adds no protection).
CSRF_COOKIE_HTTPONLY = False
CSRF_COOKIE_SAMESITE = "Lax"
# TLS ends at the reverse proxy, which redirects HTTP to HTTPS and sends HSTS
# (docs/deploy.md). Set these to make Django do it instead.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_count("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
SECURE_REFERRER_POLICY = "same-origin"
# Silenced only while the proxy does the job (above): W008 "SECURE_SSL_REDIRECT is not
# True" and W004 "SECURE_HSTS_SECONDS is not set". Every other deploy check stays on.
SILENCED_SYSTEM_CHECKS = [
    *([] if SECURE_SSL_REDIRECT else ["security.W008"]),
    *([] if SECURE_HSTS_SECONDS else ["security.W004"]),
]

# --- Streams that heal (docs/architecture.md) ----------------------------------------
# Seconds a page lets an unfinished job go without a frame before it re-reads the job
# over HTTP (jobs/static/jobs/resync.js): a frame lost in Redis then costs at most
# this long, never a bar stuck for good. A kind that reports sends a frame at least
# every second or so, so 15 s of silence is a lost frame or a very slow step; and one
# GET per silent job every 15 s costs the server nothing.
_stream_resync = os.environ.get("STREAM_RESYNC_SECONDS", "15")
try:
    STREAM_RESYNC_SECONDS = float(_stream_resync)
except ValueError:
    STREAM_RESYNC_SECONDS = float("nan")
if not 0 < STREAM_RESYNC_SECONDS <= 3600:
    raise RuntimeError(
        f"STREAM_RESYNC_SECONDS must be a number of seconds above 0, at most 3600, not {_stream_resync!r}."
    )

# --- Logging ---------------------------------------------------------------------

# Every line logged while a worker runs a job carries the job's id and kind
# (core/log.py): ` [job=<id> kind=<kind>]` in the plain format, `job_id` and `job_kind`
# fields in the JSON one (LOG_FORMAT=json, one object per line, for log collectors).
LOG_FORMATS = ("plain", "json")
LOG_FORMAT = os.environ.get("LOG_FORMAT", "plain").strip().lower()
if LOG_FORMAT not in LOG_FORMATS:
    raise RuntimeError(f"LOG_FORMAT must be one of {', '.join(LOG_FORMATS)}, not {LOG_FORMAT!r}.")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"job_context": {"()": "core.log.JobContextFilter"}},
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s%(job_context)s %(message)s"},
        "json": {"()": "core.log.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["job_context"]},
    },
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
