"""The public HTTP API: ask, feedback, health."""
from __future__ import annotations

import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from app.ratelimit import client_address, rate_limits, retry_after_header, too_fast_detail
from app.services import Services
from webhooks.base import InboundEvent

router = APIRouter()


async def get_services(request: Request) -> Services:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
    return request.app.state.services


ServicesDep = Annotated[Services, Depends(get_services)]


class AskRequest(BaseModel):
    text: str = Field(description="the person's message (at most VSSBOT_MAX_TEXT_CHARS characters)")
    session_id: str | None = Field(None, max_length=128, description="keeps one conversation across calls")
    lang: Literal["vi", "en"] | None = Field(None, description="reply language; detected when absent")
    intent_id: str | None = Field(
        None, max_length=80, description="the suggestion the person chose from a clarify reply: answered as that entry"
    )

    @field_validator("text")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("text must not be empty")
        return v


class SuggestionOut(BaseModel):
    intent_id: str
    question: str
    regime: str | None


class AskResponse(BaseModel):
    kind: Literal["faq", "clarify", "fallback", "smalltalk", "handover"]
    intent_id: str | None
    regime: str | None
    confidence: float
    answer: str
    suggestions: list[SuggestionOut]
    message_id: str


class FeedbackRequest(BaseModel):
    message_id: str = Field(max_length=64)
    helpful: bool
    comment: str | None = Field(None, max_length=2000)


class ErrorOut(BaseModel):
    detail: str


# Answers every public route may give besides its own (documented so that clients, and the
# schemathesis run in the tests, know them). 422 keeps FastAPI's own shape: `detail` is a list.
ERRORS: dict[int | str, dict[str, object]] = {
    413: {"model": ErrorOut, "description": "body larger than VSSBOT_API_MAX_BODY_BYTES"},
    429: {"model": ErrorOut, "description": "too many messages from this sender or address; wait Retry-After seconds",
          "headers": {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}},
    500: {"model": ErrorOut, "description": "unexpected error (logged with the request id; no detail is shown)"},
}


def _limit(request: Request, *keys: str) -> None:
    """Count this call against its sender and its address; 429 when either is over its limit."""
    limits = rate_limits(request)
    address = client_address(request)
    for limiter, key in ((limits.address, f"addr:{address}"), *((limits.sender, k) for k in keys)):
        decision = limiter.hit(key)
        if not decision.allowed:
            raise HTTPException(status_code=429, detail=too_fast_detail(decision.retry_after),
                                headers={"Retry-After": retry_after_header(decision.retry_after)})


def _invalid(field: str, kind: str, msg: str, **ctx: object) -> RequestValidationError:
    """A 422 in FastAPI's own shape, for checks the request model cannot make itself."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": msg, **({"ctx": ctx} if ctx else {})}])


@router.post("/api/v1/ask", response_model=AskResponse, responses=ERRORS)
async def ask(body: AskRequest, services: ServicesDep, request: Request) -> AskResponse:
    # keyed by the conversation when there is one, else by the address (which `_limit` counts anyway)
    _limit(request, f"web:{body.session_id}" if body.session_id else f"web-addr:{client_address(request)}")
    limit = services.settings.max_text_chars
    if len(body.text) > limit:
        raise _invalid("text", "string_too_long", f"String should have at most {limit} characters", max_length=limit)
    if body.intent_id is not None and body.intent_id not in services.bot.kb.by_id:
        raise _invalid("intent_id", "value_error", f"unknown intent_id {body.intent_id[:80]!r}")
    event = InboundEvent(
        channel="web", user_id=body.session_id or uuid.uuid4().hex, text=body.text, lang=body.lang,
        kind="choice" if body.intent_id else "text", payload=body.intent_id,
    )
    handled = await run_in_threadpool(services.pipeline.handle, event)
    assert handled is not None  # web events carry no platform id, so they are never duplicates
    r = handled.reply
    return AskResponse(
        kind=r.kind,  # type: ignore[arg-type]  # one of the five kinds by construction
        intent_id=r.intent_id, regime=r.regime, confidence=r.confidence, answer=r.text,
        suggestions=[SuggestionOut(intent_id=s.intent_id, question=s.question, regime=s.regime) for s in r.suggestions],
        message_id=handled.reply_id,
    )


@router.post("/api/v1/feedback", responses={**ERRORS, 404: {"model": ErrorOut, "description": "no such bot reply"}})
async def feedback(body: FeedbackRequest, services: ServicesDep, request: Request) -> dict[str, bool]:
    _limit(request)  # no sender identity in a rating: the address limit only
    ok = await run_in_threadpool(services.pipeline.feedback, body.message_id, body.helpful, body.comment)
    if not ok:
        raise HTTPException(status_code=404, detail="no bot reply with this message_id")
    return {"ok": True}


@router.get("/healthz", responses={503: {"description": "the database does not answer (same report)"}})
async def healthz(services: ServicesDep, response: Response) -> dict[str, object]:
    """200 when the database answers; 503 (with the same report) when it does not."""
    def probe() -> str:
        try:
            with services.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            return f"error: {type(exc).__name__}"

    db = await run_in_threadpool(probe)
    if db != "ok":
        response.status_code = 503
    kb = services.bot.kb
    s = services.settings
    channels: dict[str, object] = {"messenger": {"enabled": s.messenger_enabled}, "zalo": {"enabled": s.zalo_enabled}}
    if services.zalo_tokens is not None and db == "ok":
        row = await run_in_threadpool(services.zalo_tokens.current)
        channels["zalo"] = {"enabled": True, "token_error": row.last_error if row else None,
                            "token_expires_at": row.expires_at.isoformat() if row and row.expires_at else None}
    return {
        "status": "ok" if db == "ok" else "degraded",
        "database": db,
        "knowledge": {"version": kb.version, "entries": len(kb.faq_entries())},
        "channels": channels,
    }
