"""Webhook routes: Messenger and Zalo deliveries → verified → parsed → pipeline → 200.

The reply is stored in the outbox in the same transaction as the event; the dispatcher sends it,
so the platform gets its 200 fast. A channel without its settings is disabled: 404.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated

import structlog
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from app.api.public import get_services
from app.bot import Reply
from app.ratelimit import RateLimits, rate_limits, slow_down_reply
from app.services import Services
from intents.normalize import detect_language
from webhooks import messenger, zalo
from webhooks.base import InboundEvent

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


async def _ingest(services: Services, channel: str, raw: bytes, parse: Callable[[bytes], list[InboundEvent]],
                  limits: RateLimits) -> bool:
    """A verified delivery: every event through the pipeline; False if it was not for us.
    Malformed JSON is a 400; valid JSON of a shape we do not handle is acknowledged and ignored
    (a platform retries anything but a 200, for hours). A sender over its rate limit still gets
    the 200 (a refused delivery is retried, and too many get the webhook disabled): the event is
    stored unanswered, but for one polite "slow down" reply in a notice window."""
    try:
        json.loads(raw)
    except ValueError as exc:
        raise HTTPException(status_code=400, detail=f"malformed JSON: {exc}") from exc
    try:
        events = parse(raw)
    except ValueError as exc:  # zalo.UnsupportedEvent included
        log.info("delivery_ignored", channel=channel, reason=str(exc))
        return False
    handled = 0
    for event in events:
        limited, notice = _over_limit(limits, channel, event)
        if await run_in_threadpool(services.pipeline.handle, event, limited, notice) is not None:
            handled += 1
    if handled and services.dispatcher is not None:
        services.dispatcher.wake.set()
    log.info("delivery", channel=channel, events=len(events), handled=handled)
    return True


def _over_limit(limits: RateLimits, channel: str, event: InboundEvent) -> tuple[bool, Reply | None]:
    """Whether this sender is over its limit, and the slow-down notice if it is its turn for one.
    Echoes (the Page or OA speaking) and standby events (never answered) are not the sender's."""
    if event.kind == "echo" or event.extra.get("standby") == "true":
        return False, None
    decision = limits.sender.hit(f"{channel}:{event.user_id}")
    if decision.allowed:
        return False, None
    log.warning("rate_limited", channel=channel, user=event.user_id, notice=decision.notify,
                retry_after=round(decision.retry_after, 1))
    return True, slow_down_reply(event.lang or detect_language(event.text)) if decision.notify else None


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


@router.post("/webhooks/messenger")
async def messenger_delivery(request: Request, services: ServicesDep) -> dict[str, str]:
    s = services.settings
    if not s.messenger_enabled:
        raise HTTPException(status_code=404, detail="the Messenger channel is not configured")
    raw = await _body(request, s.max_body_bytes)
    if not messenger.verify(raw, request.headers, s.messenger_app_secret or ""):
        log.warning("messenger_bad_signature", bytes=len(raw))
        raise HTTPException(status_code=403, detail="bad or missing X-Hub-Signature-256")
    ingested = await _ingest(services, "messenger", raw, messenger.parse, rate_limits(request))
    return {"status": "EVENT_RECEIVED" if ingested else "ignored"}


@router.post("/webhooks/zalo")
async def zalo_delivery(request: Request, services: ServicesDep) -> dict[str, str]:
    s = services.settings
    if not s.zalo_enabled:
        raise HTTPException(status_code=404, detail="the Zalo channel is not configured")
    raw = await _body(request, s.max_body_bytes)
    if zalo.is_probe(raw):
        return {"status": "ok"}  # the unsigned test Zalo sends when the webhook URL is saved
    if not zalo.verify(s.zalo_app_id or "", s.zalo_oa_secret or "", raw, request.headers.get("x-zevent-signature")):
        log.warning("zalo_bad_signature", bytes=len(raw))
        raise HTTPException(status_code=403, detail="bad or missing X-ZEvent-Signature")
    return {"status": "ok" if await _ingest(services, "zalo", raw, zalo.parse, rate_limits(request)) else "ignored"}
