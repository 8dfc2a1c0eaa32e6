"""One inbound event → stored, answered, reply stored: all in one transaction."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.bot import Bot, Reply
from app.db.models import Conversation, Feedback, Message, Person, utcnow
from webhooks.base import InboundEvent

log = structlog.get_logger(__name__)

# NUL and other control characters: PostgreSQL refuses NUL in text, and none of them mean anything.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
CONVERSATION_IDLE = timedelta(hours=24)


def clean_text(text: str, limit: int) -> str:
    return _CONTROL.sub("", text)[:limit]


@dataclass(frozen=True)
class Handled:
    reply: Reply
    inbound_id: str
    reply_id: str
    conversation_id: int


class Pipeline:
    """Composes the bot and the conversation log; channels call `handle`."""

    def __init__(self, bot: Bot, sessions: sessionmaker[Session], match_chars: int = 600, store_chars: int = 10000):
        self.bot = bot
        self.sessions = sessions
        self.match_chars = match_chars
        self.store_chars = store_chars

    def handle(self, event: InboundEvent) -> Handled | None:
        """Answer and log one event; None if this event was already handled (a retry)."""
        start = time.perf_counter()
        text = clean_text(event.text or "", self.store_chars)
        if event.kind == "choice" and event.payload:
            reply = self.bot.chosen(event.payload, text, event.lang)
        else:
            reply = self.bot.reply(text[: self.match_chars], event.lang)
        latency_ms = (time.perf_counter() - start) * 1000
        try:
            with self.sessions() as session, session.begin():
                conversation = self._conversation(session, event, reply.lang)
                inbound = Message(
                    conversation_id=conversation.id, direction="in", channel=event.channel,
                    external_id=event.event_id, text=text, lang=reply.lang,
                )
                session.add(inbound)
                session.flush()  # a retried delivery fails here, on the unique event id
                outbound = Message(
                    conversation_id=conversation.id, direction="out", channel=event.channel,
                    reply_to_id=inbound.id, text=reply.text, lang=reply.lang, kind=reply.kind,
                    entry_id=reply.intent_id, regime=reply.regime, confidence=reply.confidence,
                    candidates=reply.candidates, kb_version=reply.kb_version, latency_ms=round(latency_ms, 3),
                )
                session.add(outbound)
                conversation.last_message_at = utcnow()
                session.flush()
                handled = Handled(reply, inbound.id, outbound.id, conversation.id)
        except IntegrityError:
            if event.event_id is None:
                raise
            log.info("duplicate_event", channel=event.channel, event_id=event.event_id)
            return None
        log.info(
            "answered", channel=event.channel, kind=reply.kind, intent=reply.intent_id,
            confidence=reply.confidence, latency_ms=round(latency_ms, 2), message_id=handled.reply_id,
        )
        return handled

    def _conversation(self, session: Session, event: InboundEvent, lang: str) -> Conversation:
        person = session.scalar(
            select(Person).where(Person.channel == event.channel, Person.external_id == event.user_id)
        )
        now = utcnow()
        if person is None:
            person = Person(channel=event.channel, external_id=event.user_id, lang=lang)
            session.add(person)
            session.flush()
        person.last_seen, person.lang = now, lang
        conversation = session.scalar(
            select(Conversation)
            .where(Conversation.person_id == person.id)
            .order_by(Conversation.last_message_at.desc())
            .limit(1)
        )
        if conversation is None or _aware(conversation.last_message_at) < now - CONVERSATION_IDLE:
            conversation = Conversation(person_id=person.id, channel=event.channel)
            session.add(conversation)
            session.flush()
        return conversation

    def feedback(self, message_id: str, helpful: bool, comment: str | None = None) -> bool:
        """Record (or replace) feedback on a bot reply; False if there is no such reply."""
        with self.sessions() as session, session.begin():
            message = session.get(Message, message_id)
            if message is None or message.direction != "out":
                return False
            existing = session.scalar(select(Feedback).where(Feedback.message_id == message_id))
            if existing is None:
                session.add(Feedback(message_id=message_id, helpful=helpful, comment=comment))
            else:
                existing.helpful, existing.comment, existing.created_at = helpful, comment, utcnow()
        return True


def _aware(dt: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns: read them as UTC."""
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
