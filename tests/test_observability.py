"""Request ids in responses and JSON logs, Prometheus metrics after real traffic, /readyz, on a
real server on loopback (SQLite, and PostgreSQL when configured)."""
from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, update

from app.bot import Bot
from app.db.models import ChannelToken
from app.db.session import make_engine, make_sessionmaker
from app.logging import setup_logging
from app.main import create_app
from app.observability import failure_reason, request_id_from
from app.outbox import RetryPolicy
from app.services import Services, build_services
from app.settings import Settings
from tests.conftest import LiveServer, free_port
from tests.test_channels import (  # the stand-in Graph and Zalo APIs (fixture `platform`), signed deliveries
    OA_SECRET, ZALO_APP, ZALO_SECRET, Platform, serving_channels, messenger_post, text_event, wait_for, zalo_post,
)

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of /metrics, keyed by name and sorted labels."""
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def grew(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much a counter grew (counters are per process and other tests share this one)."""
    return value(after, name, **labels) - value(before, name, **labels)


# --- request id ---------------------------------------------------------------------------------


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """JSON logs (as with VSSBOT_LOG_JSON=true) into a buffer; the previous configuration afterwards."""
    saved_structlog = structlog.get_config()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    buffer = io.StringIO()
    setup_logging("INFO", json=True, stream=buffer)
    yield buffer
    structlog.configure(**saved_structlog)
    root.handlers[:], root.level = saved_handlers, saved_level


def log_lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.startswith("{")]


def test_every_request_gets_an_id_in_its_response_and_in_its_log_lines(services: Services, json_log: io.StringIO) -> None:
    with LiveServer(services) as live:
        given = httpx.post(live.url + "/api/v1/ask", json={"text": "nghỉ thai sản được mấy tháng"},
                           headers={"X-Request-ID": "lb-7f3a.42:1"})
        made = [httpx.post(live.url + "/api/v1/ask", json={"text": "rút bhxh 1 lần"}) for _ in range(2)]
        odd = httpx.post(live.url + "/api/v1/ask", json={"text": "bhyt"}, headers={"X-Request-ID": "<b>" + "x" * 200})
        not_found = httpx.get(live.url + "/no/such/page")
    assert given.headers["X-Request-ID"] == "lb-7f3a.42:1"  # a proxy's id is kept: its logs meet ours
    ids = [r.headers["X-Request-ID"] for r in (*made, odd, not_found)]
    assert len(set(ids)) == 4 and all(len(i) == 32 and int(i, 16) >= 0 for i in ids)  # fresh ones otherwise
    assert not_found.status_code == 404
    # the pipeline's line, written in a worker thread, carries the id of the request it served
    answered = {line["message_id"]: line for line in log_lines(json_log) if line.get("event") == "answered"}
    for response in (given, *made, odd):
        line = answered[response.json()["message_id"]]
        assert line["request_id"] == response.headers["X-Request-ID"]
        assert line["level"] == "info" and "timestamp" in line


def test_an_unhandled_error_is_logged_and_counted_with_its_request_id(json_log: io.StringIO) -> None:
    app = create_app(Settings())  # no lifespan here: the routes below need no database

    @app.get("/boom/{n}")
    @app.get("/admin/boom/{n}")  # the console's paths are left to the console's own error handling
    def boom(n: int) -> None:
        raise RuntimeError("kaput")

    async def call(path: str, request_id: str) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://vssbot") as client:
            return await client.get(path, headers={"X-Request-ID": request_id})

    for route, request_id in (("/boom/{n}", "req-boom"), ("/admin/boom/{n}", "req-admin-boom")):
        labels = {"method": "GET", "route": route, "status": "500"}
        counted = REGISTRY.get_sample_value("vssbot_http_requests_total", labels) or 0
        assert asyncio.run(call(route.replace("{n}", "1"), request_id)).status_code == 500
        errors = [line for line in log_lines(json_log) if line.get("request_id") == request_id and line["level"] == "error"]
        assert errors and all(line["error"] == "RuntimeError" for line in errors)
        assert REGISTRY.get_sample_value("vssbot_http_requests_total", labels) == counted + 1


def test_a_request_id_must_be_short_and_plain() -> None:
    assert request_id_from("abc-123_X.y:z") == "abc-123_X.y:z"
    for bad in (None, "", "a b", "x" * 129, '{"event":"forged"}', "id\nnext", "é"):
        made = request_id_from(bad)
        assert made != bad and len(made) == 32


# --- metrics ------------------------------------------------------------------------------------


@pytest.fixture
def channel_server(platform: Platform, database_url: str, bot: Bot) -> Iterator[tuple[LiveServer, Services]]:
    """Both channels on, against the stand-in APIs; a retried send waits an hour (so it stays pending)."""
    with serving_channels(platform, database_url, bot, RetryPolicy(base_delay=3600, max_delay=3600)) as served:
        yield served


def test_metrics_after_traffic(channel_server: tuple[LiveServer, Services], platform: Platform) -> None:
    live, services = channel_server
    before = scrape(live.url)
    assert value(before, "vssbot_database_up") == 1
    assert value(before, "vssbot_knowledge_info", version=services.bot.kb.version) == 1
    assert value(before, "vssbot_outbox_oldest_pending_age_seconds") == 0
    assert value(before, "vssbot_channel_token_refresh_ok", channel="zalo") == 1  # seeded, never failed

    for text in ("nghỉ thai sản được mấy tháng", "rút bhxh 1 lần", "thời tiết hôm nay thế nào"):
        assert httpx.post(live.url + "/api/v1/ask", json={"text": text}).status_code == 200
    assert httpx.post(live.url + "/api/v1/ask", json={"text": ""}).status_code == 422
    assert httpx.get(live.url + "/static/chat.js").status_code == 200
    assert httpx.get(live.url + "/wp-login.php").status_code == 404
    # Messenger: one reply delivered, one refused for good (551), one that failed and waits to retry
    assert messenger_post(live.url, [text_event("u1", "m_1", "trợ cấp thất nghiệp được bao nhiêu")]).status_code == 200
    assert wait_for(lambda: platform.sent_to("u1"))
    platform.fail_next = [(400, {"error": {"message": "This person isn't available right now.", "code": 551}})]
    messenger_post(live.url, [text_event("u2", "m_2", "rút bhxh một lần")])
    assert wait_for(lambda: not platform.fail_next)
    platform.fail_next = [(500, {"error": {"message": "temporary", "code": 2}})]
    messenger_post(live.url, [text_event("u3", "m_3", "thẻ bhyt bị mất làm lại ở đâu")])
    assert wait_for(lambda: not platform.fail_next)
    # Zalo: the stored access token is stale, so the first send refreshes it (25 h) and goes out
    assert zalo_post(live.url, "z1", "zm1", "đóng bhxh bao nhiêu năm thì được lương hưu").status_code == 200
    assert wait_for(lambda: platform.zalo)

    after = wait_for(lambda: (s := scrape(live.url)) and value(s, "vssbot_outbox_rows", status="sending") == 0 and s, 10)
    assert grew(before, after, "vssbot_http_requests_total", method="POST", route="/api/v1/ask", status="200") == 3
    assert grew(before, after, "vssbot_http_requests_total", method="POST", route="/api/v1/ask", status="422") == 1
    assert grew(before, after, "vssbot_http_requests_total", method="POST", route="/webhooks/messenger", status="200") == 3
    assert grew(before, after, "vssbot_http_requests_total", method="GET", route="/static/{path}", status="200") == 1
    assert grew(before, after, "vssbot_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert grew(before, after, "vssbot_http_requests_total", method="GET", route="/metrics", status="200") >= 1
    assert grew(before, after, "vssbot_http_request_duration_seconds_count", method="POST", route="/api/v1/ask") == 4
    assert grew(before, after, "vssbot_http_request_duration_seconds_bucket", method="POST", route="/api/v1/ask", le="+Inf") == 4
    # decisions: the two benefit questions are answered, the weather is not in scope
    assert grew(before, after, "vssbot_decisions_total", channel="web", kind="faq") == 2
    assert grew(before, after, "vssbot_decisions_total", channel="web", kind="fallback") == 1
    assert sum(grew(before, after, "vssbot_decisions_total", channel="messenger", kind=k)
               for k in ("faq", "clarify", "fallback", "smalltalk", "handover")) == 3
    # deliveries and why they failed
    assert grew(before, after, "vssbot_outbox_deliveries_total", channel="messenger", outcome="sent") == 1
    assert grew(before, after, "vssbot_outbox_deliveries_total", channel="messenger", outcome="failed") == 1
    assert grew(before, after, "vssbot_outbox_deliveries_total", channel="messenger", outcome="retry") == 1
    assert grew(before, after, "vssbot_outbox_deliveries_total", channel="zalo", outcome="sent") == 1
    assert grew(before, after, "vssbot_outbox_delivery_failures_total", channel="messenger", reason="messenger_551") == 1
    assert grew(before, after, "vssbot_outbox_delivery_failures_total", channel="messenger", reason="messenger_2") == 1
    # the database's view: one reply waits for its retry, one failed for good
    assert value(after, "vssbot_outbox_rows", status="pending") == 1
    assert value(after, "vssbot_outbox_rows", status="failed") == 1
    assert value(after, "vssbot_outbox_oldest_pending_age_seconds") > 0
    assert 24 * 3600 < value(after, "vssbot_channel_token_expires_in_seconds", channel="zalo") <= 90000
    assert value(after, "vssbot_channel_token_refresh_ok", channel="zalo") == 1
    assert value(after, "vssbot_channel_token_updated_timestamp_seconds", channel="zalo") > 0


def test_a_failed_token_refresh_shows_in_the_metrics(platform: Platform, database_url: str, bot: Bot) -> None:
    settings = Settings(database_url=database_url, zalo_app_id=ZALO_APP, zalo_app_secret=ZALO_SECRET,
                        zalo_oa_secret=OA_SECRET, zalo_access_token="old", zalo_refresh_token="refresh-1",
                        zalo_api_base=platform.url + "/zalo", zalo_oauth_base=platform.url + "/no-such-oauth",
                        dispatch_interval=0.05)
    services = build_services(settings, bot=bot)
    assert services.dispatcher is not None
    services.dispatcher.policy = RetryPolicy(base_delay=3600, max_delay=3600)
    with LiveServer(services) as live:
        before = scrape(live.url)
        zalo_post(live.url, "z9", "zm9", "bhyt hộ gia đình đóng bao nhiêu")
        after = wait_for(lambda: (s := scrape(live.url)) and value(s, "vssbot_channel_token_refresh_ok", channel="zalo") == 0 and s, 15)
        assert after, "the failed refresh never showed"
        assert wait_for(lambda: grew(before, scrape(live.url), "vssbot_outbox_delivery_failures_total",
                                     channel="zalo", reason="token") == 1)
    services.close()


def test_failure_reasons_are_few_and_plain() -> None:
    assert failure_reason("messenger 551: This person isn't available right now. (HTTP 400)") == "messenger_551"
    assert failure_reason("after 1 of 2 parts: messenger 613/2018278: Calls exceeded (HTTP 400)") == "messenger_613"
    assert failure_reason("zalo -230: outside the window (HTTP 200)") == "zalo_-230"
    assert failure_reason("part 2/3 (1 sent): zalo -216: Access token is invalid") == "zalo_-216"
    assert failure_reason("messenger: HTTP 502: <html>Bad gateway</html>") == "http_502"
    assert failure_reason("HTTP 503: busy") == "http_503"
    assert failure_reason("messenger: timeout (ReadTimeout)") == "timeout"
    assert failure_reason("network: ConnectError: [Errno 111] Connection refused") == "network"
    assert failure_reason("token refresh: ZaloTokenError: -14014 invalid") == "token"
    assert failure_reason("KeyError: 'x'") == "other" and failure_reason(None) == "other"


def test_counters_add_up_across_processes_in_multiprocess_mode(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, one process's /metrics reports every process's counters."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    record = "from app.observability import record_decision; record_decision('messenger', 'faq')"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", record], cwd=ROOT, env=env, check=True, timeout=60)
    show = ("from prometheus_client import generate_latest; from app.observability import _process_registry; "
            "print(generate_latest(_process_registry()).decode())")
    out = subprocess.run([sys.executable, "-c", show], cwd=ROOT, env=env, check=True, timeout=60,
                         capture_output=True, text=True).stdout
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(out) for s in f.samples}
    assert value(samples, "vssbot_decisions_total", channel="messenger", kind="faq") == 2


# --- readiness ----------------------------------------------------------------------------------


def test_ready_when_the_database_answers_and_the_channels_are_set_up(channel_server: tuple[LiveServer, Services]) -> None:
    live, _ = channel_server
    r = httpx.get(live.url + "/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "checks": {"database": "ok", "messenger": "ok", "zalo": "ok"}}
    assert httpx.get(live.url + "/healthz").status_code == 200  # liveness is still there


def test_not_ready_when_the_database_is_unreachable(services: Services) -> None:
    # The process as it is when its database URL leads nowhere (a start needs the database, so
    # the running services get an engine on a port where nobody listens).
    url = f"postgresql+psycopg://vssbot:db-password@127.0.0.1:{free_port()}/vssbot"
    engine = make_engine(url)
    cut_off = dataclasses.replace(services, engine=engine, sessions=make_sessionmaker(engine), dispatcher=None)
    cut_off.inbox, cut_off.limits = services.inbox, services.limits  # not init fields: replace() leaves them out
    with LiveServer(cut_off, health_ok=False) as live:
        r = httpx.get(live.url + "/readyz")
        metrics = scrape(live.url)
        health = httpx.get(live.url + "/healthz")
    engine.dispose()
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "not ready" and body["failed"] == ["database"]
    assert body["checks"]["database"].startswith("unreachable") and body["checks"]["messenger"] == "disabled"
    assert "db-password" not in r.text and "127.0.0.1" not in r.text  # no secret, no address
    assert value(metrics, "vssbot_database_up") == 0  # the scrape itself still works
    assert health.status_code == 503  # /healthz reports the database as before


def test_not_ready_when_a_channel_is_half_configured(database_url: str, bot: Bot) -> None:
    settings = Settings(database_url=database_url, messenger_page_token="EAAB-page-token-secret")
    services = build_services(settings, bot=bot)
    with LiveServer(services) as live:
        r = httpx.get(live.url + "/readyz")
    services.close()
    assert r.status_code == 503 and r.json()["failed"] == ["messenger"]
    assert r.json()["checks"]["messenger"] == "incomplete: set VSSBOT_MESSENGER_VERIFY_TOKEN, VSSBOT_MESSENGER_APP_SECRET"
    assert "EAAB" not in r.text


def test_not_ready_when_zalo_has_no_stored_refresh_token(channel_server: tuple[LiveServer, Services]) -> None:
    live, services = channel_server
    with services.sessions() as s, s.begin():
        s.execute(update(ChannelToken).values(refresh_token=None))
    r = httpx.get(live.url + "/readyz")
    assert r.status_code == 503 and r.json()["failed"] == ["zalo"]
    with services.sessions() as s, s.begin():
        s.execute(delete(ChannelToken))
    assert httpx.get(live.url + "/readyz").json()["checks"]["zalo"] == "no stored refresh token"
