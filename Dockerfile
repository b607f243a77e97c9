# jobstream: one image for every process of docker-compose.yml (web, worker, flower and
# the one-shot migrate); the compose file picks the command. Default: daphne on 8000.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app

# Dependencies first: this layer is reused until requirements.txt changes. Every pin
# has a manylinux wheel, so the slim image needs no compiler.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

# A fixed numeric uid, so orchestrators that check runAsNonRoot can verify it. The media
# folder is created here, owned by that user: a fresh named volume mounted on it copies
# this ownership, so workers can write result files that web then serves.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app \
    && mkdir -p /data/media \
    && chown app:app /data/media

# The code stays owned by root: the app user can read it, not change it.
COPY . .

# Static files are baked in and served by whitenoise from STATIC_ROOT. Settings refuse
# DEBUG=false without a SECRET_KEY, so this step alone gets a throwaway one.
RUN SECRET_KEY=collectstatic-only-not-a-secret DEBUG=false python manage.py collectstatic --noinput

# Production-safe defaults; docker-compose.yml (or the orchestrator) sets the rest,
# SECRET_KEY included: without it the settings refuse to start.
ENV DEBUG=false \
    MEDIA_ROOT=/data/media \
    WHITENOISE_USE_FINDERS=false

USER 10001:10001

# 8000: daphne (HTTP + WebSocket); 5555: Flower, when the container runs it.
EXPOSE 8000 5555

# --websocket-max-message-size: core/daphne_limits.py WEBSOCKET_MAX_MESSAGE_BYTES (4 KiB + 1 KiB headroom)
CMD ["daphne", "--websocket-max-message-size", "5120", "-b", "0.0.0.0", "-p", "8000", "core.asgi:application"]
