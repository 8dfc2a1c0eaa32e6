"""Zalo Official Account adapter: verify X-ZEvent-Signature, parse events, send replies, refresh tokens."""
from __future__ import annotations

import hashlib
import hmac
import json
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from webhooks.base import InboundEvent, MalformedBody, Option, OutboundMessage, SendResult

CHANNEL = "zalo"
DEFAULT_API_BASE = "https://openapi.zalo.me"
DEFAULT_OAUTH_BASE = "https://oauth.zaloapp.com"

MAX_TEXT = 2000  # characters per consultation message (channels.md B5)
MAX_BUTTONS = 5  # v2 SDK limit; UNCONFIRMED for v3, so stay within it
MAX_BUTTON_TITLE = 100  # UNCONFIRMED (daopk/zaloapi types)
# Buttons send their payload back as the user's text; Zalo's convention is a leading "#", which is also
# how parse() tells a button tap (or an OA-menu query item) from typed text.
QUERY_PREFIX = "#"
TOKEN_ERRORS = frozenset({-216, -220})  # invalid / expired access token: refresh, then retry
RETRYABLE_ERRORS = frozenset({-32})  # rate limited
FALLBACK_EXPIRES_IN = 3600  # only if a refresh answer lacks expires_in: the shortest lifetime ever documented

# Events that are not input for the bot: receipts, reactions, forms it never asks for, anonymous
# web-widget users it cannot answer through message/cs, consent and call events.
IGNORED_EVENTS = frozenset({
    "user_received_message", "user_seen_message", "unfollow", "user_reacted_message", "oa_reacted_message",
    "user_feedback", "user_submit_info", "add_user_to_tag",
    "oa_send_consent", "user_reply_consent", "oa_call_user", "user_call_oa",
})
IGNORED_PREFIXES = ("anonymous_send_", "oa_send_anonymous_")

_HEX64 = re.compile(r"[0-9a-f]{64}")
_QUERY = re.compile(re.escape(QUERY_PREFIX) + r"(\S+)")


class UnsupportedEvent(ValueError):
    """A well-formed Zalo event of a type this adapter does not know: answer 200 and ignore it, since
    Zalo retries non-200 answers for hours and then disables the webhook."""


class ZaloTokenError(RuntimeError):
    """A refresh of the OA access token failed; `retryable` is False when a person must re-consent."""

    def __init__(self, message: str, *, code: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable


# --- verification ----------------------------------------------------------------------------------


def _timestamps(raw: bytes, header: str | None) -> list[str]:
    """The body's `timestamp` (what Zalo hashes), then the X-ZEvent-Timestamp header if one was sent."""
    found: list[str] = []
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        obj = None
    if isinstance(obj, dict):
        ts = obj.get("timestamp")
        if isinstance(ts, (str, int)) and not isinstance(ts, bool) and str(ts):
            found.append(str(ts))
    if header and header.strip() and header.strip() not in found:
        found.append(header.strip())
    return found


def signature_variant(app_id: str, oa_secret_key: str, raw: bytes, signature: str | None, *,
                      oa_id: str | None = None, app_secret: str | None = None,
                      timestamp_header: str | None = None) -> str | None:
    """Which signature variant matches ("app_id+oa_secret_key" is the believed one), or None.

    X-ZEvent-Signature is `mac=` + hex(sha256(id + raw body + timestamp + secret)), a plain digest, not an
    HMAC. Sources disagree on the id (app id or OA id) and the secret (OA Secret Key or App Secret), so
    pass `oa_id` / `app_secret` to also accept those, and log the variant that matched during bring-up.
    """
    if not signature:
        return None
    given = signature.strip().lower()
    given = given.removeprefix("mac=")
    if not _HEX64.fullmatch(given):
        return None
    ids = [(name, v) for name, v in (("app_id", app_id), ("oa_id", oa_id)) if v]
    # An empty secret would make the digest computable by anyone: never accept it.
    secrets = [(name, v) for name, v in (("oa_secret_key", oa_secret_key), ("app_secret", app_secret)) if v]
    matched = None
    for ts in _timestamps(raw, timestamp_header):
        for id_name, id_value in ids:
            for secret_name, secret in secrets:
                digest = hashlib.sha256(id_value.encode() + raw + ts.encode() + secret.encode()).hexdigest()
                if hmac.compare_digest(digest, given) and matched is None:
                    matched = f"{id_name}+{secret_name}"
    return matched


def verify(app_id: str, oa_secret_key: str, raw: bytes, signature: str | None, *,
           oa_id: str | None = None, app_secret: str | None = None, timestamp_header: str | None = None) -> bool:
    """True if `signature` (the X-ZEvent-Signature value) signs these exact request bytes."""
    return signature_variant(app_id, oa_secret_key, raw, signature, oa_id=oa_id, app_secret=app_secret,
                             timestamp_header=timestamp_header) is not None


def is_probe(raw: bytes) -> bool:
    """The unsigned test POST Zalo sends when the webhook URL is saved (`{}`; blank tolerated): answer 200."""
    return re.fullmatch(rb"\s*(\{\s*\})?\s*", raw) is not None


# --- parsing -----------------------------------------------------------------------------------------


class _Model(BaseModel):
    # Ids are 18-19 digit numbers sent as strings; should one arrive as a JSON number keep its exact digits.
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, frozen=True)


class _Party(_Model):
    id: str | None = None
    admin_id: str | None = None  # on oa_send_* when an OA admin typed the message (UNCONFIRMED)


class _Attachment(_Model):
    type: str | None = None
    payload: Any = None


class _Message(_Model):
    msg_id: str | None = None
    text: str | None = None
    attachments: list[_Attachment] | None = None
    quote_msg_id: str | None = None


class ZaloEvent(_Model):
    """The fields of a Zalo OA webhook event this adapter reads (channels.md B2)."""

    event_name: str
    app_id: str | None = None
    oa_id: str | None = None
    user_id: str | None = None  # user_click_chatnow (UNCONFIRMED field set)
    user_id_by_app: str | None = None
    timestamp: str | None = None
    source: str | None = None
    sender: _Party | None = None
    recipient: _Party | None = None
    follower: _Party | None = None
    message: _Message | None = None


def _sent_at(ts: str | None) -> datetime | None:
    if ts is None:
        return None
    try:
        if not (ts.isascii() and ts.isdigit()):
            raise ValueError
        return datetime.fromtimestamp(int(ts) / 1000, tz=UTC)
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"zalo event: timestamp {ts[:40]!r} is not epoch milliseconds") from None


def _extra(ev: ZaloEvent, oa_id: str | None, **more: str | None) -> dict[str, str]:
    fields = {"event_name": ev.event_name, "oa_id": oa_id, "app_id": ev.app_id,
              "user_id_by_app": ev.user_id_by_app, **more}
    return {k: v for k, v in fields.items() if v}


def _require(value: str | None, what: str, ev: ZaloEvent) -> str:
    if not value:
        raise ValueError(f"zalo {ev.event_name}: missing {what}")
    return value


def _derived_id(ev: ZaloEvent, user: str) -> str:
    # No msg_id on these events: the same delivery retried carries the same name, user and timestamp.
    return f"{ev.event_name}:{user}:{_require(ev.timestamp, 'timestamp', ev)}"


def _nfc(text: str | None) -> str:
    return unicodedata.normalize("NFC", text or "")


def _user_message(ev: ZaloEvent) -> InboundEvent:
    user = _require(ev.sender.id if ev.sender else None, "sender.id", ev)
    msg = ev.message
    if msg is None:
        raise ValueError(f"zalo {ev.event_name}: missing message")
    event_id = _require(msg.msg_id, "message.msg_id", ev)
    oa_id = ev.recipient.id if ev.recipient else None
    kind, payload, text = "text", None, _nfc(msg.text)
    if ev.event_name == "user_send_text":
        if msg.text is None:
            raise ValueError("zalo user_send_text: missing message.text")
        extra = _extra(ev, oa_id, quote_msg_id=msg.quote_msg_id)
        # A tap on an oa.query.* button or an OA-menu query item arrives as text equal to its payload
        # (UNCONFIRMED): read it as the payload first, keeping the text for payloads the app does not know.
        if query := _QUERY.fullmatch(text.strip()):
            kind, payload = "postback", query.group(1)
    else:  # image, sticker, file, link, location...: media the bot cannot read (a caption may be in text)
        attachments = msg.attachments or []
        types = ",".join(a.type for a in attachments if a.type) or ev.event_name.removeprefix("user_send_")
        urls = (a.payload.get("url") for a in attachments if isinstance(a.payload, dict))
        url = next((u for u in urls if isinstance(u, str) and u), None)
        kind, extra = "attachment", _extra(ev, oa_id, attachment_type=types, attachment_url=url)
    return InboundEvent(channel=CHANNEL, user_id=user, text=text, event_id=event_id, kind=kind, payload=payload,
                        sent_at=_sent_at(ev.timestamp), extra=extra)


def _echo(ev: ZaloEvent) -> InboundEvent:
    # sender is the OA, recipient the user: the conversation is the user's.
    user = _require(ev.recipient.id if ev.recipient else None, "recipient.id", ev)
    msg = ev.message or _Message()
    return InboundEvent(channel=CHANNEL, user_id=user, text=_nfc(msg.text), kind="echo",
                        event_id=msg.msg_id or _derived_id(ev, user), sent_at=_sent_at(ev.timestamp),
                        extra=_extra(ev, ev.sender.id if ev.sender else None,
                                     admin_id=ev.sender.admin_id if ev.sender else None))


def _greeting(ev: ZaloEvent, kind: str) -> InboundEvent:
    # follow has no sender (follower.id); user_click_chatnow is believed to carry a flat user_id.
    candidates = (ev.follower.id if ev.follower else None, ev.user_id, ev.sender.id if ev.sender else None)
    user = _require(next((c for c in candidates if c), None), "the user id (follower.id / user_id)", ev)
    oa_id = ev.oa_id or (ev.recipient.id if ev.recipient else None)
    return InboundEvent(channel=CHANNEL, user_id=user, text="", kind=kind, event_id=_derived_id(ev, user),
                        sent_at=_sent_at(ev.timestamp), extra=_extra(ev, oa_id, source=ev.source))


def _event(ev: ZaloEvent) -> InboundEvent | None:
    name = ev.event_name
    if name in IGNORED_EVENTS or name.startswith(IGNORED_PREFIXES):
        return None
    if name.startswith("user_send_"):
        return _user_message(ev)
    if name.startswith("oa_send_"):
        return _echo(ev)
    if name == "follow":
        return _greeting(ev, "follow")
    if name == "user_click_chatnow":
        return _greeting(ev, "chatnow")
    raise UnsupportedEvent(f"zalo: unsupported event_name {name!r}")


def parse(raw: bytes) -> list[InboundEvent]:
    """The bot's input in one webhook POST: [] for the probe, receipts and other non-input events.

    Raises ValueError (with a clear message) for malformed JSON, a body that is not a Zalo OA event or
    lacks a needed field, and its subclass UnsupportedEvent for an event type this adapter does not know.
    Zalo sends one event per POST (no batching seen anywhere), hence one object, not an array.
    """
    if is_probe(raw):
        return []
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise MalformedBody(f"zalo: malformed JSON body ({e.__class__.__name__})") from None
    if not isinstance(obj, dict):
        # ValueError, not TypeError: valid JSON of a shape not handled is acknowledged and ignored.
        raise ValueError(f"zalo: expected one JSON object per POST, got {type(obj).__name__}")  # noqa: TRY004
    if not isinstance(obj.get("event_name"), str) or not obj["event_name"]:
        raise ValueError("zalo: not a Zalo OA event (no event_name)")
    try:
        ev = ZaloEvent.model_validate(obj)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"zalo {obj['event_name']}: bad field {where}: {err['msg']}") from None
    event = _event(ev)
    return [event] if event else []


# --- sending -----------------------------------------------------------------------------------------


def _units(text: str) -> int:
    # Whether Zalo counts code points or UTF-16 units is UNCONFIRMED: count the stricter (emoji = 2).
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> int:
    """How many leading characters of `text` fit in `limit` UTF-16 units."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


_BREAKS = (re.compile(r"\n\s*\n"), re.compile(r"\n"), re.compile(r"[.!?…][\"')\]»”]*(?=\s)"), re.compile(r"\s"))


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """NFC text cut into parts of at most `limit` units, at the last paragraph, line, sentence or word
    break in the second half of each window (a hard cut only for a run without any)."""
    text = unicodedata.normalize("NFC", text).strip()
    parts: list[str] = []
    while _units(text) > limit:
        window = text[:_fit(text, limit)]
        cut = len(window)
        for pattern in _BREAKS:
            ends = [m.end() for m in pattern.finditer(window)]
            if ends and ends[-1] > len(window) // 2:
                cut = ends[-1]
                break
        parts.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        parts.append(text)
    return parts


def _title(title: str) -> str:
    title = unicodedata.normalize("NFC", title).strip()
    if _units(title) <= MAX_BUTTON_TITLE:
        return title
    return title[:_fit(title, MAX_BUTTON_TITLE - 1)].rstrip() + "…"


def _buttons(options: tuple[Option, ...]) -> dict[str, Any]:
    return {"type": "template", "payload": {"template_type": "button", "buttons": [
        {"title": _title(o.title), "type": "oa.query.hide",
         "payload": o.payload if o.payload.startswith(QUERY_PREFIX) else QUERY_PREFIX + o.payload}
        for o in options[:MAX_BUTTONS]]}}


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _classify(resp: httpx.Response) -> SendResult:
    try:
        body = resp.json()
    except ValueError:
        body = None
    code = _int(body.get("error")) if isinstance(body, dict) else None
    detail = str(body.get("message", "")) if isinstance(body, dict) else resp.text[:200]
    if resp.status_code in (408, 429) or resp.status_code >= 500:
        suffix = f": {detail}" if detail else ""
        return SendResult(ok=False, retryable=True, error=f"HTTP {resp.status_code}{suffix}")
    if code is None:
        # Zalo answers every call with {"error": int, ...}; anything else came from something in between.
        return SendResult(ok=False, retryable=resp.is_success,
                          error=f"HTTP {resp.status_code}: unreadable answer: {resp.text[:200]}")
    if code == 0 and resp.is_success:
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        mid = data.get("message_id")
        return SendResult(ok=True, platform_message_id=str(mid) if mid is not None else None)
    error = f"zalo {code}: {detail}" + ("" if resp.is_success else f" (HTTP {resp.status_code})")
    if code in TOKEN_ERRORS:
        return SendResult(ok=False, retryable=True, token_expired=True, error=error)
    # -230 outside the 7-day window, -213 not a follower, -201 bad parameter, quota...: retrying cannot help.
    return SendResult(ok=False, retryable=code in RETRYABLE_ERRORS, error=error)


async def _post(client: httpx.AsyncClient, url: str, token: str, body: dict[str, Any]) -> SendResult:
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    try:
        resp = await client.post(url, content=content,
                                 headers={"access_token": token, "Content-Type": "application/json"})
    except httpx.TimeoutException as e:
        return SendResult(ok=False, retryable=True, error=f"timeout: {e.__class__.__name__}")
    except httpx.TransportError as e:
        return SendResult(ok=False, retryable=True, error=f"network: {e.__class__.__name__}: {e}")
    return _classify(resp)


async def send(client: httpx.AsyncClient, base_url: str, token: str, msg: OutboundMessage) -> SendResult:
    """Send a reply as consultation message(s): `POST {base}/v3.0/oa/message/cs`, header `access_token`.

    One message unless the text exceeds 2,000 characters (then split at sentence boundaries, options as
    oa.query.hide buttons on the last part). With several parts `platform_message_id` lists every sent
    id, comma-separated, so the app can recognise the echoes of all of them as its own.
    """
    parts: list[str | None] = list(split_text(msg.text))
    if not parts and not msg.options:
        return SendResult(ok=False, error="empty message: no text and no options")
    parts = parts or [None]
    url = base_url.rstrip("/") + "/v3.0/oa/message/cs"
    sent: list[str] = []
    for i, part in enumerate(parts, 1):
        if i <= msg.skip_parts:
            continue  # delivered by an earlier try: never send a part twice
        message: dict[str, Any] = {} if part is None else {"text": part}
        if i == len(parts) and msg.options:
            message["attachment"] = _buttons(msg.options)
        result = await _post(client, url, token, {"recipient": {"user_id": msg.user_id}, "message": message})
        if not result.ok:
            if len(parts) == 1:
                return result
            # Earlier parts were delivered: the outbox keeps the count and a retry resumes here.
            return SendResult(ok=False, retryable=result.retryable, token_expired=result.token_expired,
                              error=f"part {i}/{len(parts)} ({len(sent)} sent): {result.error}",
                              platform_message_id=",".join(sent) or None, parts_sent=i - 1)
        if result.platform_message_id:
            sent.append(result.platform_message_id)
    return SendResult(ok=True, platform_message_id=",".join(sent) or None, parts_sent=len(parts))


# --- tokens ------------------------------------------------------------------------------------------


async def refresh_access_token(client: httpx.AsyncClient, oauth_base: str, app_id: str, app_secret: str,
                               refresh_token: str) -> tuple[str, str, int]:
    """(access token, the NEW refresh token, expires_in seconds) for a single-use refresh token.

    The old refresh token is dead once Zalo answers: the caller must persist the new pair before use.
    Raises ZaloTokenError; `retryable` is True for network and server errors (though Zalo may already
    have consumed the token), False when Zalo refused it (an OA admin must grant access again).
    """
    url = oauth_base.rstrip("/") + "/v4/oa/access_token"
    try:
        resp = await client.post(url, headers={"secret_key": app_secret}, data={
            "app_id": app_id, "grant_type": "refresh_token", "refresh_token": refresh_token})
    except httpx.TransportError as e:
        raise ZaloTokenError(f"zalo token refresh: network: {e.__class__.__name__}: {e}", retryable=True) from e
    if resp.status_code == 429 or resp.status_code >= 500:
        raise ZaloTokenError(f"zalo token refresh: HTTP {resp.status_code}", retryable=True)
    try:
        body = resp.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ZaloTokenError(f"zalo token refresh: HTTP {resp.status_code}: unreadable answer: {resp.text[:200]}")
    access, refresh = body.get("access_token"), body.get("refresh_token")
    if isinstance(access, str) and access and isinstance(refresh, str) and refresh:
        # expires_in comes as a string ("90000"); never throw a fresh pair away over it.
        expires = _int(body.get("expires_in"))
        return access, refresh, expires if expires and expires > 0 else FALLBACK_EXPIRES_IN
    code = _int(body.get("error"))
    reason = " ".join(str(body[k]) for k in ("error_name", "error_description", "message") if body.get(k))
    raise ZaloTokenError(f"zalo token refresh refused: {code}: {reason or resp.text[:200]}", code=code)
