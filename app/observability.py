"""What operators see: a request id on every request and log line, Prometheus metrics, readiness.

Metrics are kept per process: each `vssbot serve` / `vssbot worker` process exposes its own
counters at its own `/metrics`, and Prometheus scrapes every process (sum them in PromQL). The
database gauges (outbox depth and age, channel tokens) are read from the shared database at scrape
time, so every process reports the same values (take `max`). When several processes share one
scrape target (e.g. `uvicorn --workers N`), set PROMETHEUS_MULTIPROC_DIR to an empty directory
before they start: the counters are then merged across them (prometheus_client's multiprocess mode).
"""
from __future__ import annotations

import asyncio
import itertools
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import func, select, text
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db.models import ChannelToken, InboxDelivery, Outbox, as_utc, utcnow

if TYPE_CHECKING:  # app.services imports the pipeline, which imports this module
    from app.services import Services

log = structlog.get_logger(__name__)
T = TypeVar("T")
router = APIRouter()

REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID_KEY = REQUEST_ID_HEADER.lower().encode()  # as ASGI gives header names
# An incoming id is kept only if it is short and plain: it goes into every log line, so nothing
# that could forge a line, carry markup or blow up the log is accepted from outside.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "<unmatched>"  # one label for every path no route knows: scanners must not grow the series
PROBE_TIMEOUT = 5.0  # seconds a readiness or scrape query may take before it counts as failed

HTTP_REQUESTS = Counter("vssbot_http_requests_total", "HTTP requests by method, route template and status",
                        ["method", "route", "status"])
HTTP_LATENCY = Histogram("vssbot_http_request_duration_seconds", "HTTP request latency by method and route template",
                         ["method", "route"],
                         buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
DECISIONS = Counter("vssbot_decisions_total", "bot replies by decision kind and channel", ["channel", "kind"])
DELIVERIES = Counter("vssbot_outbox_deliveries_total",
                     "outbox send attempts by outcome: sent, retry (will be tried again), failed (given up)",
                     ["channel", "outcome"])
DELIVERY_FAILURES = Counter("vssbot_outbox_delivery_failures_total",
                            "failed outbox send attempts by reason (platform error code, HTTP status, network, ...)",
                            ["channel", "reason"])


# --- recording (called by the pipeline and the outbox) ------------------------------------------


def record_decision(channel: str, kind: str) -> None:
    """One bot reply of this kind went to this channel."""
    DECISIONS.labels(channel, kind).inc()


_PLATFORM_CODE = re.compile(r"\b(messenger|zalo) (-?\d+)")
_HTTP_STATUS = re.compile(r"\bHTTP (\d{3})\b")


def failure_reason(error: str | None) -> str:
    """A send error as a label of few values: the platform's code, else the HTTP status, else its kind.
    (The full text stays on the outbox row; label values must not be free text.)"""
    error = error or ""
    if match := _PLATFORM_CODE.search(error):
        return f"{match.group(1)}_{match.group(2)}"
    lowered = error.lower()
    for kind in ("token", "timeout", "network"):
        if kind in lowered:
            return kind
    if match := _HTTP_STATUS.search(error):
        return f"http_{match.group(1)}"
    return "other"


def record_delivery(channel: str, outcome: str, error: str | None = None) -> None:
    """One send attempt: `sent`, `retry` or `failed`; a failure also counts under its reason."""
    DELIVERIES.labels(channel, outcome).inc()
    if outcome != "sent":
        DELIVERY_FAILURES.labels(channel, failure_reason(error)).inc()


# --- request id and HTTP metrics ----------------------------------------------------------------


def request_id_from(value: str | None) -> str:
    """The caller's id when it is sane (a proxy's id ties its logs to ours), else a new one."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


def assign_request_id(scope: Scope) -> str:
    """This request's id (from X-Request-ID when sane), kept as request.state.request_id."""
    incoming = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == _REQUEST_ID_KEY), None)
    request_id = request_id_from(incoming)
    scope.setdefault("state", {})["request_id"] = request_id
    return request_id


# New ids only need to be unique, not secret: a random prefix per process and a counter cost less
# than a uuid4 per request (os.urandom each time), which showed in the webhook's profile.
_ID_PREFIX = uuid.uuid4().hex[:20]
_ID_COUNTER = itertools.count()


def _route_template(scope: Scope, root_path: str) -> str:
    route = scope.get("route")
    if route is not None and getattr(route, "path", None):
        return str(route.path)
    if scope.get("endpoint") is not None:  # a mounted app (static files): its prefix, not each file
        return scope.get("root_path", "")[len(root_path):] + "/{path}"
    return UNMATCHED


class RequestContextMiddleware:
    """Gives every HTTP request an id (echoed as X-Request-ID, bound into every log line of the
    request) and counts it by route template and status with its latency. Pure ASGI, so the
    context variables reach the endpoint and its thread-pool work unchanged."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = assign_request_id(scope)
        root_path = scope.get("root_path", "")
        method = scope.get("method", "GET") if scope.get("method") in _METHODS else "OTHER"
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        start = time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_id)
            except Exception as exc:
                # the traceback is logged by the server, outside this request's context: this line
                # ties the failure to the request id the client and the proxy saw
                log.error("request_failed", method=method, route=_route_template(scope, root_path),
                          error=type(exc).__name__)
                raise
            finally:
                record_request(method, _route_template(scope, root_path), status, time.perf_counter() - start)


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """One HTTP request answered: counted by route template and status, its latency observed."""
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_LATENCY.labels(method, route).observe(seconds)


# --- /metrics -----------------------------------------------------------------------------------


class _Families:
    """Metric families computed for one scrape, as a collector prometheus_client can render."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def database_families(services: Services) -> list[Metric]:
    """The state kept in the database, read now: outbox and inbox depth and age, channel tokens, the
    knowledge-base version; `vssbot_database_up` 0 (and nothing else from it) when it does not answer."""
    up = GaugeMetricFamily("vssbot_database_up", "1 when the database answered this scrape")
    families: list[Metric] = [up]
    kb = services.bot.kb
    info = GaugeMetricFamily("vssbot_knowledge_info", "the knowledge-base version this process answers from",
                             labels=["version"])
    info.add_metric([kb.version], 1)
    families.append(info)
    now = utcnow()
    try:
        with services.sessions() as session:
            # Only unfinished and failed rows: counting `sent` would scan the whole table each scrape.
            counts = dict(session.execute(
                select(Outbox.status, func.count()).where(Outbox.status.in_(("pending", "sending", "failed")))
                .group_by(Outbox.status)).all())
            oldest = session.scalar(select(func.min(Outbox.created_at)).where(Outbox.status.in_(("pending", "sending"))))
            tokens = session.scalars(select(ChannelToken)).all()
            # The inbox holds only what is not answered yet (answered deliveries are deleted).
            inbox = dict(session.execute(
                select(InboxDelivery.status, func.count()).group_by(InboxDelivery.status)).all())
            inbox_oldest = session.scalar(
                select(func.min(InboxDelivery.received_at)).where(InboxDelivery.status == "pending"))
    except Exception as exc:  # noqa: BLE001 - a scrape reports the database down, it does not fail
        log.warning("metrics_database_error", error=type(exc).__name__)
        up.add_metric([], 0)
        return families
    up.add_metric([], 1)
    depth = GaugeMetricFamily("vssbot_outbox_rows", "outbox rows by status: pending (due or waiting for a retry), "
                              "sending (claimed by a dispatcher), failed (given up)", labels=["status"])
    for status in ("pending", "sending", "failed"):
        depth.add_metric([status], counts.get(status, 0))
    age = GaugeMetricFamily("vssbot_outbox_oldest_pending_age_seconds",
                            "age of the oldest reply not yet sent (pending or sending); 0 when none waits")
    age.add_metric([], max(0.0, (now - as_utc(oldest)).total_seconds()) if oldest else 0.0)
    families += [depth, age]
    inbox_rows = GaugeMetricFamily(
        "vssbot_inbox_rows", "acknowledged webhook deliveries not answered yet: pending (waiting or being "
        "answered), failed (gave up after repeated errors: see the inbox_failed log lines)", labels=["status"])
    for status in ("pending", "failed"):
        inbox_rows.add_metric([status], inbox.get(status, 0))
    inbox_age = GaugeMetricFamily("vssbot_inbox_oldest_pending_age_seconds",
                                  "age of the oldest acknowledged delivery not answered yet; 0 when none waits")
    inbox_age.add_metric([], max(0.0, (now - as_utc(inbox_oldest)).total_seconds()) if inbox_oldest else 0.0)
    families += [inbox_rows, inbox_age]
    expires = GaugeMetricFamily("vssbot_channel_token_expires_in_seconds",
                                "seconds until the stored access token expires (negative: expired)", labels=["channel"])
    refresh_ok = GaugeMetricFamily("vssbot_channel_token_refresh_ok",
                                   "1 unless the last token refresh failed (then an OA admin must grant access again)",
                                   labels=["channel"])
    updated = GaugeMetricFamily("vssbot_channel_token_updated_timestamp_seconds",
                                "when the stored tokens last changed (Unix time)", labels=["channel"])
    for row in tokens:
        if row.expires_at is not None:
            expires.add_metric([row.channel], (as_utc(row.expires_at) - now).total_seconds())
        refresh_ok.add_metric([row.channel], 0 if row.last_error else 1)
        updated.add_metric([row.channel], as_utc(row.updated_at).timestamp())
    families += [expires, refresh_ok, updated]
    return families


def _process_registry() -> CollectorRegistry:
    """This process's counters, or every process's when prometheus_client's multiprocess mode is on."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


async def _off_loop(fn: Callable[[Services], T], services: Services) -> T | None:
    """Run blocking database work in a thread; None when it takes longer than PROBE_TIMEOUT
    (an unreachable host must not hang a probe; the thread finishes on its own)."""
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn, services), PROBE_TIMEOUT)
    except TimeoutError:
        return None


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text exposition: this process's counters plus the database gauges."""
    services: Services = request.app.state.services
    families = await _off_loop(database_families, services)
    if families is None:
        down = GaugeMetricFamily("vssbot_database_up", "1 when the database answered this scrape")
        down.add_metric([], 0)
        families = [down]
    scrape = CollectorRegistry(auto_describe=False)
    scrape.register(_Families(families))  # type: ignore[arg-type]  # a collector needs only collect()
    body = generate_latest(_process_registry()) + generate_latest(scrape)
    return Response(body, media_type=CONTENT_TYPE_LATEST)


# --- /readyz ------------------------------------------------------------------------------------

# The settings each channel needs (a channel with some but not all of them is a misconfiguration:
# its webhook would answer 404 while the operator believes it is on).
CHANNEL_SETTINGS = {
    "messenger": ("messenger_verify_token", "messenger_app_secret", "messenger_page_token"),
    "zalo": ("zalo_app_id", "zalo_app_secret", "zalo_oa_secret", "zalo_refresh_token"),
}


def _database_check(services: Services) -> str:
    try:
        with services.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # noqa: BLE001 - reported by name only: a message may hold the URL
        return f"unreachable ({type(exc).__name__})"


def _channel_check(services: Services, channel: str, database_ok: bool) -> str:
    names = CHANNEL_SETTINGS[channel]
    missing = [n for n in names if not getattr(services.settings, n)]
    if len(missing) == len(names):
        return "disabled"
    if missing:
        return "incomplete: set " + ", ".join(f"VSSBOT_{n.upper()}" for n in missing)
    if channel == "zalo" and database_ok:
        row = services.zalo_tokens.current() if services.zalo_tokens is not None else None
        if row is None or not row.refresh_token:
            return "no stored refresh token"
    return "ok"


def readiness(services: Services) -> dict[str, str]:
    """Each check's result: "ok", "disabled" (a channel not set up: fine), or what is wrong."""
    checks = {"database": _database_check(services)}
    for channel in CHANNEL_SETTINGS:
        checks[channel] = _channel_check(services, channel, checks["database"] == "ok")
    return checks


@router.get("/readyz", include_in_schema=False)
async def readyz(request: Request) -> JSONResponse:
    """200 when this process can take traffic (the database answers, every channel that is set up
    is set up completely), else 503 naming the failed checks. No secret or URL is ever shown."""
    services: Services = request.app.state.services
    checks = await _off_loop(readiness, services)
    if checks is None:
        checks = {"database": f"no answer within {PROBE_TIMEOUT:g} s"}
    failed = sorted(name for name, result in checks.items() if result not in ("ok", "disabled"))
    body: dict[str, object] = {"status": "ready" if not failed else "not ready", "checks": checks}
    if failed:
        body["failed"] = failed
        log.warning("not_ready", failed=failed)
    return JSONResponse(body, status_code=503 if failed else 200)
