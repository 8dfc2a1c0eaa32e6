# vssbot: the API, the chat page, the webhooks, the staff console (and, with another command, the
# outbox worker). Two stages: wheels are built with the build tools, the runtime image gets only
# the installed packages and runs as a non-root user.
#   docker build -t vssbot .
#   docker run -p 8000:8000 -v vssbot-var:/app/var vssbot            # SQLite, one process
#   docker compose up                                               # PostgreSQL, app + worker
# For PostgreSQL set VSSBOT_DATABASE_URL=postgresql+psycopg://user:password@host:5432/vssbot.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Only what the package is built from (pyproject.toml names README.md as its readme).
COPY pyproject.toml README.md /src/
COPY app /src/app
COPY intents /src/intents
COPY knowledge /src/knowledge
COPY webhooks /src/webhooks
RUN pip wheel --wheel-dir /wheels /src


FROM python:3.11-slim AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VSSBOT_DATABASE_URL=sqlite:////app/var/vssbot.db \
    VSSBOT_LOG_JSON=true

# A fixed numeric id, so that runAsNonRoot-style checks can see it is not root.
RUN groupadd --system --gid 10001 vssbot \
 && useradd --system --uid 10001 --gid vssbot --home-dir /app --no-create-home --shell /usr/sbin/nologin vssbot
# Installed non-editable: templates, static files, migrations and the knowledge base come from
# site-packages (pyproject.toml's package-data).
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels pip install --no-index --find-links /wheels vssbot

WORKDIR /app
RUN mkdir -p /app/var && chown vssbot:vssbot /app/var
USER 10001:10001
EXPOSE 8000

# Liveness: /healthz answers 200 while the process serves (readiness, with the database and the
# channels, is /readyz: for a load balancer or Kubernetes' readinessProbe).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# exec: the server replaces the shell as PID 1 and gets docker stop's SIGTERM itself.
CMD ["sh", "-c", "vssbot db upgrade && exec vssbot serve --host 0.0.0.0 --port 8000"]
