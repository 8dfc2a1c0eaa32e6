# vssbot: the API, the chat page and the conversation log in one container.
#   docker build -t vssbot .
#   docker run -p 8000:8000 -v vssbot-var:/app/var vssbot
# The SQLite log lives in /app/var (mount a volume there to keep it); for PostgreSQL set
# VSSBOT_DATABASE_URL=postgresql+psycopg://user:password@host:5432/vssbot instead.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# A fixed numeric id, so that runAsNonRoot-style checks can see it is not root.
RUN groupadd --system --gid 10001 vssbot \
 && useradd --system --uid 10001 --gid vssbot --home-dir /app --no-create-home --shell /usr/sbin/nologin vssbot

# Only what the package is built from (pyproject.toml names README.md as its readme: the build
# fails without it). Installed non-editable, so templates, static files, migrations and the
# knowledge base come from site-packages (pyproject.toml's package-data), not from /tmp/src.
COPY pyproject.toml README.md /tmp/src/
COPY app /tmp/src/app
COPY intents /tmp/src/intents
COPY knowledge /tmp/src/knowledge
COPY webhooks /tmp/src/webhooks
RUN pip install /tmp/src \
 && rm -rf /tmp/src

WORKDIR /app
RUN mkdir -p /app/var && chown vssbot:vssbot /app/var
USER 10001:10001

ENV VSSBOT_DATABASE_URL=sqlite:////app/var/vssbot.db

EXPOSE 8000

# /healthz answers 200 even when the database is down ("status": "degraded"): read the status.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import json, sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4); sys.exit(0 if json.load(r).get('status') == 'ok' else 1)"]

# exec: the server replaces the shell as PID 1 and gets docker stop's SIGTERM itself.
CMD ["sh", "-c", "vssbot db upgrade && exec vssbot serve --host 0.0.0.0 --port 8000"]
