"""Bad input and unexpected errors: body size limit and strict JSON on the public API, and a
generic 500 (logged, never shown) for anything that escapes a route outside the console."""
from __future__ import annotations

import json
import math
from email.message import Message as MimeHeader
from typing import Any

import structlog
from fastapi import FastAPI
from sqlalchemy.exc import InterfaceError, OperationalError
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import Settings

log = structlog.get_logger(__name__)

API_PREFIX = "/api/"
CONSOLE_PREFIX = "/admin"  # the console renders its own error pages (app/console/__init__.py)
BODY_METHODS = {"POST", "PUT", "PATCH"}


class MalformedJSON(ValueError):
    """A body that a lenient parser would take but this API refuses."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # The standard parser keeps the last of two equal keys: a request that says two things is refused.
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedJSON(f"duplicate key {key[:40]!r}")
        obj[key] = value
    return obj


def _no_constant(name: str) -> float:
    raise MalformedJSON(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise MalformedJSON(f"number {text[:20]} is out of range")
    return value


def strict_loads(raw: bytes | str) -> Any:
    """RFC 8259 JSON and nothing more: no duplicate keys, no NaN or Infinity, no overflowing numbers.
    Raises ValueError (MalformedJSON, or the parser's own) for anything else."""
    try:
        return json.loads(raw, object_pairs_hook=_unique_keys, parse_constant=_no_constant, parse_float=_finite)
    except RecursionError:  # absurd nesting
        raise MalformedJSON("nested too deeply") from None


def _is_json(content_type: str | None) -> bool:
    """Whether this body is (or may be taken for) JSON: older FastAPI versions read an untyped body as JSON."""
    if not content_type:
        return True
    header = MimeHeader()
    header["content-type"] = content_type
    return header.get_content_maintype() == "application" and (
        header.get_content_subtype() == "json" or header.get_content_subtype().endswith("+json"))


def _request_id(scope: Scope) -> str | None:
    """The request id the observability middleware gave this request, if it runs."""
    state = scope.get("state")
    rid = state.get("request_id") if isinstance(state, dict) else None
    return rid or structlog.contextvars.get_contextvars().get("request_id")


class Guard:
    """Pure ASGI middleware (a BaseHTTPMiddleware would buffer and re-task every request).

    - `/api/*` bodies: over `max_body` bytes → 413 (declared or counted while reading); JSON that a
      lenient parser would accept but RFC 8259 does not (duplicate keys, NaN, Infinity, 1e999) or
      that does not parse at all → 422 saying what is wrong. FastAPI then validates the same bytes.
    - Any exception that escapes a route (outside /admin) → 500 `{"detail": "internal error",
      "request_id"}`, logged with its traceback; the response never carries the exception.
    """

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(CONSOLE_PREFIX):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith(API_PREFIX) and scope["method"] in BODY_METHODS:
            checked = await self._checked_body(scope, receive)
            if isinstance(checked, JSONResponse):
                await checked(scope, receive, send)
                return
            receive = _replay(checked, receive)
        await self._guarded(scope, receive, send)

    async def _checked_body(self, scope: Scope, receive: Receive) -> bytes | JSONResponse:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return _too_large(self.max_body)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:  # chunked, or a lying Content-Length: stop reading here
                return _too_large(self.max_body)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        raw = b"".join(chunks)
        if raw.strip() and _is_json(headers.get("content-type")):
            try:
                strict_loads(raw)
            except ValueError as exc:
                # 422 in FastAPI's own shape, as FastAPI answers JSON it cannot parse at all
                return JSONResponse({"detail": [{"type": "json_invalid", "loc": ["body"],
                                                 "msg": f"malformed JSON: {_reason(exc)}"}]}, status_code=422)
        return raw

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except ClientDisconnect:
            log.info("client_disconnected", method=scope["method"], path=scope["path"])  # nobody to answer
        except Exception as exc:
            rid = _request_id(scope)
            log.error("unhandled_error", method=scope["method"], path=scope["path"], error=type(exc).__name__,
                      exc_info=True)  # the request id comes with the log context
            if started:  # too late for a clean 500: let the server close the connection
                raise
            await error_response(exc, rid)(scope, receive, send)


def error_response(exc: Exception, request_id: str | None) -> JSONResponse:
    """What a client gets for an exception that escaped a handler: never the exception itself.
    The database not answering is temporary: 503 tells a platform (and a client) to retry."""
    unavailable = isinstance(exc, (OperationalError, InterfaceError))
    body: dict[str, str] = {"detail": "service temporarily unavailable" if unavailable else "internal error"}
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=503 if unavailable else 500,
                        headers={"Retry-After": "5"} if unavailable else None)


def _reason(exc: ValueError) -> str:
    if isinstance(exc, MalformedJSON):
        return str(exc)
    if isinstance(exc, UnicodeDecodeError):
        return "not UTF-8"
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    return "not valid JSON"  # e.g. an integer of thousands of digits


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"body too large (at most {limit} bytes)"}, status_code=413)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the already-read body to the app once, then waits on the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def install(app: FastAPI, settings: Settings) -> None:
    """Add the guard; it sits inside middlewares added after it (request id, metrics see its 500)."""
    app.add_middleware(Guard, max_body=settings.api_max_body_bytes)
