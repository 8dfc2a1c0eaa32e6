"""The one normalised event type that crosses from any channel into the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


class MalformedBody(ValueError):
    """A webhook body that is not JSON at all (the route answers 400), as opposed to valid JSON of a
    shape the adapter does not handle (a plain ValueError: acknowledged and ignored)."""


@dataclass(frozen=True)
class InboundEvent:
    """A person's message as the pipeline sees it, whatever platform it came from."""

    channel: str  # "web" | "messenger" | "zalo" | "cli"
    user_id: str  # the platform's id of the person (a session id on the web)
    text: str
    event_id: str | None = None  # the platform's message id: a retried delivery repeats it
    # text | choice (an offered option on the web, `payload` = entry id) | postback (a button or quick
    # reply: `payload`) | attachment | follow | chatnow (Zalo: show the welcome) | echo (the page/OA
    # itself sent a message: a person took over, unless the bot sent it)
    kind: str = "text"
    payload: str | None = None
    lang: str | None = None  # asked-for reply language, if the person chose one
    sent_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """A button or quick reply offered with a message: what it shows and what it sends back."""

    title: str
    payload: str


@dataclass(frozen=True)
class OutboundMessage:
    """A reply as the outbox hands it to a channel's `send`, whatever the platform."""

    channel: str
    user_id: str
    text: str
    options: tuple[Option, ...] = ()
    lang: str = "vi"
    skip_parts: int = 0  # a long text goes out in parts: those already delivered by an earlier try
    # A platform message tag (Messenger: "HUMAN_AGENT" lets a staff member answer 24 h - 7 days
    # after the person's last message); None: an ordinary reply inside the standard window.
    tag: str | None = None


@dataclass(frozen=True)
class SendResult:
    """What a platform said to a send: delivered, worth retrying, or given up (with why)."""

    ok: bool
    retryable: bool = False
    error: str | None = None  # the platform's error code and message, for the outbox record
    platform_message_id: str | None = None
    token_expired: bool = False  # Zalo -216 / -220: refresh the access token, then retry
    parts_sent: int = 0  # parts of the text delivered so far (skipped ones included)
