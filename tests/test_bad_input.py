"""Bad input on the public API: size limit, strict JSON, wrong shapes: a 4xx that says why, never
a 500; and an unexpected error is a generic 500 that shows nothing of it."""
from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import structlog

from app.services import Services
from tests.conftest import LiveServer

ASK = "/api/v1/ask"
SECRET = "db-password-is-hunter2"


@pytest.fixture
def server(services: Services) -> Iterator[LiveServer]:
    """The app on a live server, with one extra route that fails the way a bug would."""
    live = LiveServer(services)

    async def broken() -> dict[str, str]:
        raise RuntimeError(f"connection to postgresql://vss:{SECRET}@db failed")

    live.server.config.app.add_api_route("/api/v1/broken", broken, methods=["GET", "POST"])
    with live:
        yield live


def post(server: LiveServer, raw: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(server.url + ASK, content=raw, headers=headers, timeout=30)


def test_a_body_over_the_limit_is_413_declared_or_streamed(server: LiveServer) -> None:
    huge = b'{"text": "' + b"a" * (200 * 1024) + b'"}'
    assert post(server, huge).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        yield b'{"text": "'
        for _ in range(100):
            yield b"a" * 4096
        yield b'"}'

    r = httpx.post(server.url + ASK, content=chunks(), headers={"content-type": "application/json"}, timeout=30)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert post(server, b'{"text": "' + b"a" * 3000 + b'"}').status_code == 200  # a long question is fine


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"text": "bhxh", "text": "bhyt"}', "duplicate key"),
        (b'{"text": "bhxh", "session_id": "s", "lang": "vi", "lang": "en"}', "duplicate key"),
        (b'{"text": "bhxh", "confidence": NaN}', "NaN is not JSON"),
        (b'{"text": "bhxh", "x": -Infinity}', "Infinity is not JSON"),
        (b'{"text": "bhxh", "x": 1e999}', "out of range"),
        (b'{"text": "bhxh", "x": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"text": "\xff\xfe bad utf-8"}', "not UTF-8"),
        (b"[" * 20000 + b"]" * 20000, "nested too deeply"),
        (b'{"text": "bhxh",}', "malformed JSON"),
        (b"{not json", "malformed JSON"),
    ],
)
def test_json_a_lenient_parser_would_take_is_refused(server: LiveServer, raw: bytes, needle: str) -> None:
    r = post(server, raw)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, list) and needle in detail[0]["msg"]  # FastAPI's own 422 shape


@pytest.mark.parametrize(
    ("raw", "content_type"),
    [(b"[]", "application/json"), (b'"bhxh"', "application/json"), (b"42", "application/json"),
     (b"null", "application/json"), (b"", "application/json"), (b'{"text": "bhxh"}', "text/plain"),
     (b"text=bhxh", "application/x-www-form-urlencoded"), (b'{"text": "bhxh"}', None),
     (b'{"text": ["bhxh"]}', "application/json"), (b'{"text": {"$gt": ""}}', "application/json"),
     (b'{"text": "bhxh", "session_id": 12}', "application/json")],
)
def test_wrong_shapes_are_4xx_never_500(server: LiveServer, raw: bytes, content_type: str | None) -> None:
    r = post(server, raw, content_type)
    assert 400 <= r.status_code < 500, r.text
    assert "Traceback" not in r.text


def test_feedback_takes_the_same_guard(server: LiveServer) -> None:
    r = httpx.post(server.url + "/api/v1/feedback", content=b'{"message_id": "a", "message_id": "b", "helpful": true}',
                   headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 422 and "duplicate key" in r.text


def test_an_unexpected_error_is_a_generic_500_logged_with_its_request_id(server: LiveServer) -> None:
    with structlog.testing.capture_logs() as logs:
        r = httpx.post(server.url + "/api/v1/broken", json={"text": "x"}, headers={"X-Request-ID": "req-abc-123"},
                       timeout=10)
    assert r.status_code == 500
    body = r.json()
    assert body["detail"] == "internal error"
    assert SECRET not in r.text and "RuntimeError" not in r.text and "Traceback" not in r.text
    assert body.get("request_id") == r.headers.get("x-request-id")  # both, when the request-id middleware runs
    errors = [e for e in logs if e["event"] == "unhandled_error"]
    assert errors and errors[0]["path"] == "/api/v1/broken" and errors[0]["error"] == "RuntimeError"
    assert httpx.get(server.url + "/api/v1/broken", timeout=10).status_code == 500  # a GET too, not only /api bodies
