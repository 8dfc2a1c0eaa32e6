"""Webhook routes: Messenger and Zalo deliveries → verified → stored in the inbox → 200.
The handshake (GET) is an ordinary route; deliveries (POST) take the fast lane below.

The inbox processor (app/inbox.py, app/ingest.py) answers them: the pipeline stores each event,
the reply and its outbox row in one transaction, and the dispatcher sends it. So the platform
gets its 200 as soon as the delivery is safely stored. A channel without its settings is
disabled: 404.
"""
from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from app.api.guards import error_response
from app.api.public import get_services
from app.ingest import events_of
from app.observability import REQUEST_ID_HEADER, assign_request_id, record_request
from app.services import Services
from webhooks import messenger, zalo
from webhooks.base import MalformedBody

log = structlog.get_logger(__name__)
router = APIRouter()
ServicesDep = Annotated[Services, Depends(get_services)]


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(status_code=413, detail="body too large")
    raw = await request.body()
    if len(raw) > limit:
        raise HTTPException(status_code=413, detail="body too large")
    return raw


async def _ingest(services: Services, channel: str, raw: bytes) -> bool:
    """A verified delivery: stored (committed) for the inbox processor; False if it was not for us.
    Malformed JSON is a 400; valid JSON of a shape we do not handle is acknowledged and ignored
    (a platform retries anything but a 200, for hours)."""
    try:
        body = raw.decode("utf-8")
        events = events_of(channel, raw)
    except (UnicodeDecodeError, MalformedBody) as exc:
        raise HTTPException(status_code=400, detail=f"malformed JSON: {exc}") from exc
    except ValueError as exc:  # zalo.UnsupportedEvent included
        log.info("delivery_ignored", channel=channel, reason=str(exc))
        return False
    if not events:
        return True  # read receipts, deliveries of nothing we answer: nothing to keep
    await services.inbox.put(channel, body)
    return True


@router.get("/webhooks/messenger", response_class=PlainTextResponse)
async def messenger_handshake(
    services: ServicesDep,
    mode: Annotated[str | None, Query(alias="hub.mode")] = None,
    token: Annotated[str | None, Query(alias="hub.verify_token")] = None,
    challenge: Annotated[str | None, Query(alias="hub.challenge")] = None,
) -> str:
    s = services.settings
    if not s.messenger_enabled:
        raise HTTPException(status_code=404, detail="the Messenger channel is not configured")
    answer = messenger.handshake(mode, token, challenge, s.messenger_verify_token or "")
    if answer is None:
        raise HTTPException(status_code=403, detail="verification failed")
    return answer


# --- deliveries: the fast lane ---------------------------------------------------------------------
# A delivery POST is answered before FastAPI's routing and middleware stack (dependency solving,
# exception and body-limit middlewares, the request-context and guard middlewares): under a burst
# those cost more than the acknowledgement itself (benchmarks/webhook_load.py). `answer_delivery`
# does here what they would do for these two routes: request id, metrics, clean 4xx/500/503.


async def messenger_delivery(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    s = services.settings
    if not s.messenger_enabled:
        raise HTTPException(status_code=404, detail="the Messenger channel is not configured")
    raw = await _body(request, s.max_body_bytes)
    if not messenger.verify(raw, request.headers, s.messenger_app_secret or ""):
        log.warning("messenger_bad_signature", bytes=len(raw))
        raise HTTPException(status_code=403, detail="bad or missing X-Hub-Signature-256")
    ingested = await _ingest(services, "messenger", raw)
    return JSONResponse({"status": "EVENT_RECEIVED" if ingested else "ignored"})


async def zalo_delivery(request: Request) -> JSONResponse:
    services: Services = request.app.state.services
    s = services.settings
    if not s.zalo_enabled:
        raise HTTPException(status_code=404, detail="the Zalo channel is not configured")
    raw = await _body(request, s.max_body_bytes)
    if zalo.is_probe(raw):
        return JSONResponse({"status": "ok"})  # the unsigned test Zalo sends when the webhook URL is saved
    if not zalo.verify(s.zalo_app_id or "", s.zalo_oa_secret or "", raw, request.headers.get("x-zevent-signature")):
        log.warning("zalo_bad_signature", bytes=len(raw))
        raise HTTPException(status_code=403, detail="bad or missing X-ZEvent-Signature")
    return JSONResponse({"status": "ok" if await _ingest(services, "zalo", raw) else "ignored"})


DELIVERY_ROUTES: dict[str, Callable[[Request], Awaitable[JSONResponse]]] = {
    "/webhooks/messenger": messenger_delivery,
    "/webhooks/zalo": zalo_delivery,
}


# Also ordinary routes: a request the fast lane does not take (say, under a proxy's root path)
# still reaches its handler, through the full stack.
router.add_route("/webhooks/messenger", messenger_delivery, methods=["POST"], include_in_schema=False)
router.add_route("/webhooks/zalo", zalo_delivery, methods=["POST"], include_in_schema=False)


def is_delivery(scope: Scope) -> bool:
    return scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in DELIVERY_ROUTES


async def answer_delivery(scope: Scope, receive: Receive, send: Send) -> None:
    """One delivery POST (scope["app"] is the application), answered without the middleware stack."""
    start = time.perf_counter()
    path = scope["path"]
    request_id = assign_request_id(scope)
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        try:
            response = await DELIVERY_ROUTES[path](Request(scope, receive))
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        except ClientDisconnect:
            log.info("client_disconnected", method="POST", path=path)  # nobody to answer
            record_request("POST", path, 499, time.perf_counter() - start)
            return
        except Exception as exc:  # noqa: BLE001 - logged with its traceback, never shown
            log.error("unhandled_error", method="POST", path=path, error=type(exc).__name__, exc_info=True)
            response = error_response(exc, request_id)
        response.headers[REQUEST_ID_HEADER] = request_id
        await response(scope, receive, send)
        record_request("POST", path, response.status_code, time.perf_counter() - start)
    finally:
        structlog.contextvars.reset_contextvars(**tokens)
