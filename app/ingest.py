"""A stored webhook delivery → its events → the pipeline (with per-sender rate limits).

The webhook routes store deliveries (app/inbox.py) and the inbox processor calls `process` here;
this is the one place that knows which adapter parses which channel's body.
"""
from __future__ import annotations

from collections.abc import Callable

import structlog

from app.bot import Reply
from app.pipeline import Pipeline
from app.ratelimit import RateLimits, slow_down_reply
from intents.normalize import detect_language
from webhooks import messenger, zalo
from webhooks.base import InboundEvent

log = structlog.get_logger(__name__)

PARSERS: dict[str, Callable[[bytes], list[InboundEvent]]] = {"messenger": messenger.parse, "zalo": zalo.parse}


def events_of(channel: str, raw: bytes) -> list[InboundEvent]:
    """The events of a delivery; ValueError (zalo.UnsupportedEvent included) for a shape not handled."""
    return PARSERS[channel](raw)


def process(pipeline: Pipeline, limits: RateLimits, channel: str, body: str) -> int:
    """Every event of one delivery through the pipeline; the number answered (a retried event: 0).
    A sender over its rate limit still had its 200: the event is stored unanswered, but for one
    polite "slow down" reply in a notice window."""
    try:
        events = events_of(channel, body.encode())
    except ValueError as exc:
        log.info("delivery_ignored", channel=channel, reason=str(exc))
        return 0
    handled = 0
    for event in events:
        limited, notice = over_limit(limits, channel, event)
        if pipeline.handle(event, limited, notice) is not None:
            handled += 1
    log.info("delivery", channel=channel, events=len(events), handled=handled)
    return handled


def over_limit(limits: RateLimits, channel: str, event: InboundEvent) -> tuple[bool, Reply | None]:
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
