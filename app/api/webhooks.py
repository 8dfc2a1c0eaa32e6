"""Webhook routes: Messenger and Zalo deliveries → verified → stored in the inbox → 200.

The inbox processor (app/inbox.py, app/ingest.py) answers them: the pipeline stores each event,
the reply and its outbox row in one transaction, and the dispatcher sends it. So the platform
gets its 200 as soon as the delivery is safely stored. A channel without its settings is
disabled: 404.
"""
from __future__ import annotations

import json
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse

from app.api.public import get_services
from app.ingest import events_of
from app.observability import ROUTE_TEMPLATE
from app.services import Services
from webhooks import messenger, zalo

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
        json.loads(raw)
        body = raw.decode("utf-8")
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"malformed JSON: {exc}") from exc
    try:
        events = events_of(channel, raw)
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


# The two delivery routes are plain Starlette endpoints: FastAPI's dependency solving (headers,
# cookies, query) cost more than the rest of an acknowledgement (benchmarks/webhook_load.py).
async def messenger_delivery(request: Request) -> JSONResponse:
    request.scope[ROUTE_TEMPLATE] = "/webhooks/messenger"
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
    request.scope[ROUTE_TEMPLATE] = "/webhooks/zalo"
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


router.add_route("/webhooks/messenger", messenger_delivery, methods=["POST"], include_in_schema=False)
router.add_route("/webhooks/zalo", zalo_delivery, methods=["POST"], include_in_schema=False)
