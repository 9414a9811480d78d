# celery-janitor image: `docker build -t ghcr.io/your-org/celery-janitor:0.1.0 .` (README: Deploy;
# .github/workflows/release.yml builds it for amd64 and arm64 on a version tag).
# Stage 1 builds every wheel and installs them into a virtualenv; the final
# stage copies only that virtualenv onto a clean slim base and runs as UID 10001.
# No cache mounts (Railway's builder rejects unnamed ones). tests/integration/test_deploy.py
# lints this file with hadolint and replays the RUN lines of stage 1 in a fresh venv.

FROM python:3.12-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY janitor ./janitor
RUN pip wheel --no-cache-dir --wheel-dir /wheels .
RUN python -m venv /opt/janitor \
    && /opt/janitor/bin/pip install --no-cache-dir --no-index --find-links /wheels celery-janitor

FROM python:3.12-slim
LABEL org.opencontainers.image.title="celery-janitor" \
      org.opencontainers.image.description="Keeps a Celery Redis clean: TTLs for result keys, stale result deletion, stuck-message detection." \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 janitor \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin janitor
COPY --from=build /opt/janitor /opt/janitor
ENV PATH=/opt/janitor/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    JANITOR_LOG_FORMAT=json
USER 10001:10001
EXPOSE 9810
STOPSIGNAL SIGTERM
# /livez never touches Redis: a Redis outage must not get the container restarted.
# The port follows the daemon's own rule: JANITOR_METRICS_PORT, else PORT, else 9810.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('JANITOR_METRICS_PORT') or os.environ.get('PORT') or '9810'; urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4)"]
CMD ["celery-janitor", "run"]
