"""Facebook Messenger (Page bot) adapter: verify webhooks, parse them into InboundEvents, send replies."""
from __future__ import annotations


import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from webhooks.base import InboundEvent, MalformedBody, Option, OutboundMessage, SendResult

CHANNEL = "messenger"
MAX_TEXT = 2000  # Send API limit for message.text
MAX_QUICK_REPLIES = 13
MAX_QUICK_REPLY_TITLE = 20
MAX_GREETING = 160
MAX_MENU_ITEMS = 20
MAX_MENU_TITLE = 30  # persistent-menu button title: believed 30 (not in channels.md), shortened like quick replies
# Sent as message.metadata on every reply; Meta returns it in the echo, which is how parse() tells the
# bot's own echoes (dropped) from a human's in Page Inbox (kind="echo": the app pauses the bot).
ECHO_METADATA = "vssbot"
# Graph error codes worth retrying: 1/2 unknown or temporary, 4/17/32/341/613 rate limits,
# 1200 "temporary send message failure". Anything else that is not 5xx/429 is permanent.
# Strings, so a code is compared whatever its JSON type.
_RETRYABLE_CODES = frozenset({"1", "2", "4", "17", "32", "341", "613", "1200"})


# --- verification -------------------------------------------------------------------------------


def verify(raw: bytes, headers: Mapping[str, str], app_secret: str, *, accept_sha1: bool = False) -> bool:
    """True if `X-Hub-Signature-256` (or, when allowed, the legacy SHA-1 header) signs `raw` with the app secret.

    Checked over the exact bytes received: Meta signs its own \\uXXXX-escaped serialisation, so a
    re-serialised body fails on any Vietnamese text.
    """
    if not app_secret:
        return False  # an empty key would make every forged signature "valid"
    checks = [("x-hub-signature-256", "sha256=", hashlib.sha256)]
    if accept_sha1:
        checks.append(("x-hub-signature", "sha1=", hashlib.sha1))
    for name, prefix, algo in checks:
        given = _header(headers, name)
        if given is None:
            continue
        expected = prefix + hmac.new(app_secret.encode(), raw, algo).hexdigest()
        # compare bytes: compare_digest refuses non-ASCII str, and a garbled header must just fail
        return hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace"))
    return False


def handshake(mode: str | None, token: str | None, challenge: str | None, verify_token: str) -> str | None:
    """The GET subscription check: the challenge to echo back (200, text/plain), or None (answer 403)."""
    if mode != "subscribe" or not token or not challenge or not verify_token:
        return None
    if not hmac.compare_digest(token.encode(), verify_token.encode()):
        return None
    return challenge


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # Starlette headers are case-insensitive, a plain dict is not: look the name up either way.
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value


# --- inbound ------------------------------------------------------------------------------------


class _Model(BaseModel):
    # Unknown fields are ignored (Meta adds them); numeric ids become strings (ids stay strings).
    model_config = ConfigDict(extra="ignore", coerce_numbers_to_str=True, frozen=True)


class _Party(_Model):
    id: str


class _QuickReply(_Model):
    payload: str


class _Attachment(_Model):
    type: str = "unknown"
    payload: Any = None


class _Message(_Model):
    mid: str | None = None
    text: str | None = None
    is_echo: bool = False
    app_id: str | None = None
    metadata: str | None = None
    quick_reply: _QuickReply | None = None
    attachments: list[_Attachment] | None = None
    sticker_id: str | None = None


class _Referral(_Model):
    ref: str | None = None
    source: str | None = None


class _Postback(_Model):
    mid: str | None = None
    title: str | None = None
    payload: str | None = None
    referral: _Referral | None = None


class _Item(_Model):
    # Not required here: reads, deliveries and unknown event kinds are skipped without needing them.
    sender: _Party | None = None
    recipient: _Party | None = None
    timestamp: int | None = None
    message: _Message | None = None
    postback: _Postback | None = None


class _Entry(_Model):
    id: str
    time: int | None = None
    messaging: list[_Item] | None = None
    standby: list[_Item] | None = None


class _Envelope(_Model):
    object: str
    entry: list[_Entry]


def parse(raw: bytes, *, app_id: str | None = None) -> list[InboundEvent]:
    """Every person's message, postback and foreign echo in a webhook body, in delivery order.

    Reads, deliveries, reactions, referrals and the bot's own echoes (recognised by ECHO_METADATA,
    or by `app_id` when given) are not input and are left out. Raises ValueError, and nothing else,
    for malformed JSON, an object other than "page", or an event missing a field it needs.
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # bad UTF-8 / JSON, or absurd nesting
        raise MalformedBody(f"messenger webhook: body is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ValueError("messenger webhook: body is not a JSON object")
    if data.get("object") != "page":
        raise ValueError(f"messenger webhook: unknown object {str(data.get('object'))[:40]!r} (expected 'page')")
    try:
        envelope = _Envelope.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"messenger webhook: malformed payload at {where or 'top level'}: {first['msg']}") from None

    events: list[InboundEvent] = []
    for entry in envelope.entry:
        # standby = another app (e.g. Page Inbox) owns the thread: still input, flagged so the app
        # records it without answering.
        for items, standby in ((entry.messaging or [], False), (entry.standby or [], True)):
            for item in items:
                event = _event(entry, item, standby, app_id)
                if event is not None:
                    events.append(event)
    return events


def _event(entry: _Entry, item: _Item, standby: bool, app_id: str | None) -> InboundEvent | None:
    if item.message is None and item.postback is None:
        return None  # read, delivery, reaction, referral, optin, handover...: not input
    if item.sender is None or item.recipient is None:
        raise ValueError("messenger webhook: message or postback without sender/recipient")
    extra = {"page_id": entry.id}
    if standby:
        extra["standby"] = "true"
    sent_at = _when(item.timestamp)

    def event(user_id: str, text: str, event_id: str, kind: str, payload: str | None = None) -> InboundEvent:
        return InboundEvent(
            channel=CHANNEL, user_id=user_id, text=text, event_id=event_id, kind=kind, payload=payload,
            sent_at=sent_at, extra=extra,
        )

    if item.postback is not None:
        pb = item.postback
        if pb.referral is not None and pb.referral.ref:
            extra.update({"ref": pb.referral.ref, "ref_source": pb.referral.source or ""})
        event_id = pb.mid or _derived_id(item.sender.id, item.timestamp, pb.payload or pb.title or "")
        if pb.payload is None:
            # Standby postbacks come without a payload: the title is all there is, so treat it as text.
            return event(item.sender.id, pb.title or "", event_id, "text")
        return event(item.sender.id, pb.title or "", event_id, "postback", pb.payload)

    msg = item.message
    assert msg is not None
    if not msg.mid:
        raise ValueError("messenger webhook: message without mid")
    if msg.is_echo:
        if msg.metadata == ECHO_METADATA or (app_id is not None and msg.app_id == app_id):
            return None  # our own reply coming back
        # Sent by the Page but not by the bot (a person in Page Inbox, or another app): sender and
        # recipient are swapped, so the person in the conversation is the recipient.
        extra.update({"app_id": msg.app_id or "", "metadata": msg.metadata or ""})
        return event(item.recipient.id, msg.text or "", msg.mid, "echo")
    if msg.quick_reply is not None:  # before text: the text is only the button's title
        return event(item.sender.id, msg.text or "", msg.mid, "postback", msg.quick_reply.payload)
    if msg.text:  # a shared link has text plus a `fallback` attachment: the text is what was written
        return event(item.sender.id, msg.text, msg.mid, "text")
    if msg.attachments or msg.sticker_id:
        types = [a.type for a in msg.attachments or []] or ["sticker"]
        extra["attachment_types"] = ",".join(dict.fromkeys(types))
        return event(item.sender.id, "", msg.mid, "attachment")
    return None  # nothing a person said (e.g. an empty message)


def _when(timestamp: int | None) -> datetime | None:
    if timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(timestamp / 1000, tz=UTC)  # Meta sends epoch milliseconds
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"messenger webhook: timestamp out of range: {timestamp}") from None


def _derived_id(sender: str, timestamp: int | None, payload: str) -> str:
    # Postbacks from before v11.0 (and dashboard tests) have no mid: a retry repeats sender,
    # timestamp and payload, so their hash is a stable dedup key that fits the 128-char column.
    if timestamp is None:
        raise ValueError("messenger webhook: postback without mid or timestamp")
    digest = hashlib.sha256(f"{sender}|{timestamp}|{payload}".encode()).hexdigest()[:40]
    return f"pb_{digest}"


# --- outbound -----------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n\s*")
_SPACE = re.compile(r"\s+")


def split_text(text: str, limit: int = MAX_TEXT) -> list[str]:
    """`text` cut into parts of at most `limit` characters: at sentence ends, else spaces, else anywhere.

    Length is counted in UTF-16 code units, the stricter reading of Meta's limit (an emoji counts 2).
    """
    return _pack(text, limit, [_SENTENCE_END, _SPACE])


def _units(s: str) -> int:
    return sum(2 if ord(ch) > 0xFFFF else 1 for ch in s)  # UTF-16 code units


def _pack(text: str, limit: int, splitters: list[re.Pattern[str]]) -> list[str]:
    if not splitters:
        return _hard_cut(text.strip(), limit)
    parts: list[str] = []
    current = ""
    for piece in _pieces(text, splitters[0]):
        if _units((current + piece).strip()) <= limit:
            current += piece
            continue
        if current.strip():
            parts.append(current.strip())
        current = ""
        if _units(piece.strip()) <= limit:
            current = piece
        else:  # one sentence (or word) longer than a whole message: cut it finer
            parts.extend(_pack(piece, limit, splitters[1:]))
    if current.strip():
        parts.append(current.strip())
    return parts


def _pieces(text: str, splitter: re.Pattern[str]) -> list[str]:
    # Each piece keeps the separator that follows it, so joining pieces restores the text.
    pieces, start = [], 0
    for m in splitter.finditer(text):
        if m.end() > start:
            pieces.append(text[start:m.end()])
            start = m.end()
    pieces.append(text[start:])
    return [p for p in pieces if p]


def _hard_cut(text: str, limit: int) -> list[str]:
    parts, start, used = [], 0, 0
    for i, ch in enumerate(text):  # by code point, so a surrogate pair (emoji) is never split
        width = _units(ch)
        if used + width > limit:
            parts.append(text[start:i])
            start, used = i, 0
        used += width
    return parts + ([text[start:]] if text[start:] else [])


def _shorten(title: str, limit: int) -> str:
    title = title.strip()
    if _units(title) <= limit:
        return title
    cut = title
    while _units(cut) > limit - 1:  # room for the "…"
        cut = cut[:-1]
    if not title[len(cut)].isspace() and cut.rfind(" ") > limit // 2:
        cut = cut[: cut.rfind(" ")]  # end on a whole word when that keeps most of the title
    return cut.rstrip() + "…"


def _quick_replies(options: Sequence[Option]) -> list[dict[str, str]]:
    return [
        {"content_type": "text", "title": _shorten(o.title, MAX_QUICK_REPLY_TITLE), "payload": o.payload}
        for o in options[:MAX_QUICK_REPLIES]
    ]


async def send(client: httpx.AsyncClient, base_url: str, token: str, msg: OutboundMessage) -> SendResult:
    """Send a reply as one or more `POST {base_url}/me/messages` (RESPONSE, or MESSAGE_TAG with `msg.tag`),
    options as quick replies on the last.

    Parts go out in order and stop at the first failure, whose classification is returned; the
    message id is the last part's.
    """
    parts = split_text(msg.text)
    if not parts:
        return SendResult(ok=False, error="messenger: nothing to send (empty text)")
    url = f"{base_url.rstrip('/')}/me/messages"
    message_id: str | None = None
    for number, part in enumerate(parts, start=1):
        if number <= msg.skip_parts:
            continue  # delivered by an earlier try: never send a part twice
        message: dict[str, Any] = {"text": part, "metadata": ECHO_METADATA}
        if number == len(parts) and msg.options:
            message["quick_replies"] = _quick_replies(msg.options)
        body: dict[str, Any] = {"recipient": {"id": msg.user_id}, "messaging_type": "RESPONSE", "message": message}
        if msg.tag:  # outside the 24 h window only a tagged message may go out (HUMAN_AGENT: a person, <= 7 days)
            body["messaging_type"], body["tag"] = "MESSAGE_TAG", msg.tag
        result = await _post(client, url, token, body)
        if not result.ok:
            if number > 1:  # the outbox keeps the count, so that a retry resumes at this part
                done = f"after {number - 1} of {len(parts)} parts"
                result = SendResult(ok=False, retryable=result.retryable, error=f"{done}: {result.error}")
            return replace(result, parts_sent=number - 1)
        message_id = result.platform_message_id
    return SendResult(ok=True, platform_message_id=message_id, parts_sent=len(parts))


async def _post(client: httpx.AsyncClient, url: str, token: str, body: dict[str, Any]) -> SendResult:
    try:
        # The token goes in the query string as channels.md documents for the Send API.
        response = await client.post(url, params={"access_token": token}, json=body)
    except httpx.TimeoutException as exc:
        return _fail(True, f"messenger: timeout ({type(exc).__name__})", token)
    except httpx.HTTPError as exc:  # connection refused/reset, closed mid-response, ...
        return _fail(True, f"messenger: network error ({type(exc).__name__}: {exc})", token)
    try:
        data = response.json()
    except ValueError:
        data = None
    if response.is_success:
        mid = data.get("message_id") if isinstance(data, dict) else None
        return SendResult(ok=True, platform_message_id=str(mid) if mid is not None else None)
    return _failure(response.status_code, data, response.text, token)


def _failure(status: int, data: Any, text: str, token: str) -> SendResult:
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        retryable = status >= 500 or status == 429
        return _fail(retryable, f"messenger: HTTP {status}: {text[:200]}", token)
    code, subcode = error.get("code"), error.get("error_subcode")
    retryable = (
        status >= 500 or status == 429 or str(code) in _RETRYABLE_CODES or error.get("is_transient") is True
    )
    label = f"{code}" + (f"/{subcode}" if subcode is not None else "")
    message = str(error.get("message", ""))[:300]
    return _fail(retryable, f"messenger {label}: {message} (HTTP {status})", token)


def _fail(retryable: bool, error: str, token: str) -> SendResult:
    # The token travels in the URL: never let it reach the outbox record or the logs.
    return SendResult(ok=False, retryable=retryable, error=error.replace(token, "***") if token else error)


# --- Messenger Profile --------------------------------------------------------------------------


def profile_payload(
    greeting: str | Mapping[str, str],
    menu: Sequence[Option] | Mapping[str, Sequence[Option]],
    *,
    links: Sequence[Option] = (),
    get_started_payload: str = "GET_STARTED",
    composer_input_disabled: bool = False,
) -> dict[str, Any]:
    """Body for `POST {base}/me/messenger_profile`: Get Started button, greeting and persistent menu.

    `greeting` and `menu` are one value or a mapping by Meta locale ("default" required); menu
    Options become postback buttons, `links` (payload = URL) web_url buttons after them in every locale.
    Raises ValueError for what Meta would refuse: no default locale, a greeting over 160
    characters, more than 20 menu items.
    """
    greetings = {"default": greeting} if isinstance(greeting, str) else dict(greeting)
    menus = {"default": list(menu)} if not isinstance(menu, Mapping) else {k: list(v) for k, v in menu.items()}
    if "default" not in greetings or "default" not in menus:
        raise ValueError("messenger profile: a 'default' locale is required for the greeting and the menu")
    for locale, text in greetings.items():
        if _units(text) > MAX_GREETING:
            raise ValueError(f"messenger profile: greeting for {locale!r} is over {MAX_GREETING} characters")
    persistent_menu = []
    for locale, items in menus.items():
        if len(items) + len(links) > MAX_MENU_ITEMS:
            raise ValueError(f"messenger profile: menu for {locale!r} has more than {MAX_MENU_ITEMS} items")
        buttons: list[dict[str, str]] = [
            {"type": "postback", "title": _shorten(o.title, MAX_MENU_TITLE), "payload": o.payload} for o in items
        ]
        buttons += [{"type": "web_url", "title": _shorten(o.title, MAX_MENU_TITLE), "url": o.payload} for o in links]
        persistent_menu.append(
            {"locale": locale, "composer_input_disabled": composer_input_disabled, "call_to_actions": buttons}
        )
    return {
        "get_started": {"payload": get_started_payload},
        "greeting": [{"locale": locale, "text": text} for locale, text in greetings.items()],
        "persistent_menu": persistent_menu,
    }
