"""jobstream settings, grouped in blocks and read from the environment.

Every value has a safe development default (SQLite, the local Redis), so a fresh
checkout runs with no configuration; production sets the variables in the README.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url

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

DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DEBUG is false.")
    SECRET_KEY = "dev-only-insecure-key-change-me-0123456789-abcdefghijklmnopqrstuvwxyz"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "jobs",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
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
        # a connection kept past the request is never reused, only leaked (PostgreSQL
        # ran out of connections in bench/submit_throughput.py with 60).
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
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
DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024  # a job request is small; DESIGN.md caps JSON at 64 KiB

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# --- Redis, channel layer, Celery ------------------------------------------------

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")


CHANNEL_LAYER_BACKENDS = {
    # The pub/sub layer publishes a group message once and every daphne process that has
    # a member receives it once; the core layer's per-process list drops frames past its
    # capacity of 100 (logged only at INFO), which a progress stream cannot afford.
    "pubsub": "notifications.layers.JobStreamChannelLayer",
    "stock-pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
    "core": "channels_redis.core.RedisChannelLayer",  # stock, for the benchmarks' baseline
}
CHANNEL_LAYER = os.environ.get("CHANNEL_LAYER", "pubsub")


def channel_layers_for(redis_url: str, backend: str = CHANNEL_LAYER) -> dict[str, dict[str, object]]:
    """The channel layer config for a Redis URL (the tests point it at their own Redis)."""
    if backend not in CHANNEL_LAYER_BACKENDS:
        raise RuntimeError(f"CHANNEL_LAYER must be one of {', '.join(CHANNEL_LAYER_BACKENDS)}, not {backend!r}.")
    return {
        "default": {
            "BACKEND": CHANNEL_LAYER_BACKENDS[backend],
            "CONFIG": {"hosts": [{"address": redis_url}]},
        }
    }


CHANNEL_LAYERS = channel_layers_for(REDIS_URL)

# The longest hard time limit of any kind is 2 h (jobs/kinds.py); a Redis broker
# redelivers an unacknowledged task only after visibility_timeout, so it must exceed
# that or a long job runs twice.
LONGEST_HARD_TIME_LIMIT = 2 * 60 * 60
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", REDIS_URL)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": LONGEST_HARD_TIME_LIMIT + 600}
CELERY_RESULT_EXPIRES = 24 * 60 * 60
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

# --- jobstream -------------------------------------------------------------------

PROGRESS_MAX_RATE = float(os.environ.get("PROGRESS_MAX_RATE", "10"))  # frames/s per job
# "loop": one long-lived event loop per process publishes (notifications/publish.py).
# "naive": async_to_sync(group_send) per update, the usual pattern, kept as the
# benchmarks' baseline.
JOBSTREAM_PUBLISHER = os.environ.get("JOBSTREAM_PUBLISHER", "loop")
JOBSTREAM_BENCH_KINDS = env_bool("JOBSTREAM_BENCH_KINDS", False)  # registers the `ticker` kind
FLOWER_URL = os.environ.get("FLOWER_URL", "http://127.0.0.1:5555/flower/")
JOB_LIST_PAGE_SIZE = 20

# --- Logging ---------------------------------------------------------------------

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.channels.server": {"level": "WARNING"}},
}
