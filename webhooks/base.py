"""The one normalised event type that crosses from any channel into the pipeline."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class InboundEvent:
    """A person's message as the pipeline sees it, whatever platform it came from."""

    channel: str  # "web" | "messenger" | "zalo" | "cli"
    user_id: str  # the platform's id of the person (a session id on the web)
    text: str
    event_id: str | None = None  # the platform's message id: a retried delivery repeats it
    kind: str = "text"  # text | choice (an offered option, `payload` = entry id) | postback | attachment
    payload: str | None = None
    lang: str | None = None  # asked-for reply language, if the person chose one
    sent_at: datetime | None = None
    extra: dict[str, str] = field(default_factory=dict)
