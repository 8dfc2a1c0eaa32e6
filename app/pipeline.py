"""One inbound event → stored, answered, reply stored (and queued for its channel): one transaction."""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.bot import Bot, Reply
from app.db.models import Conversation, Feedback, Message, Outbox, Person, ReviewItem, as_utc, new_id, utcnow
from app.observability import record_decision
from app.privacy import TextVault, mask_pii
from app.replies import command_of, options_for
from webhooks.base import InboundEvent

log = structlog.get_logger(__name__)

# NUL and other control characters: PostgreSQL refuses NUL in text, and none of them mean anything.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffe\uffff]")
CONVERSATION_IDLE = timedelta(hours=24)
# Channels whose replies go out through a platform's send API (the web and CLI answer inline).
SENDING_CHANNELS = {"messenger", "zalo"}
OWN_ECHO_WINDOW = timedelta(seconds=15)
# Where staff can answer a person themselves (Page inbox, OA Manager), a request for a person
# pauses the bot; on the web page and the CLI nobody could answer yet, so the bot stays.
TAKEOVER_CHANNELS = SENDING_CHANNELS
# Replies that go to the staff review queue. The CLI is the operators' own test bench: not queued.
REVIEW_KINDS = {"fallback", "clarify", "handover"}
REVIEW_CHANNELS = {"web", "messenger", "zalo"}


def clean_text(text: str, limit: int) -> str:
    return _CONTROL.sub("", text)[:limit]


@dataclass(frozen=True)
class Handled:
    reply: Reply | None  # None: the bot stays quiet (a person has taken the conversation over)
    inbound_id: str
    reply_id: str | None
    conversation_id: int


class Pipeline:
    """Composes the bot and the conversation log; channels call `handle`."""

    def __init__(
        self, bot: Bot, sessions: sessionmaker[Session], match_chars: int = 600, store_chars: int = 10000,
        handover: timedelta = timedelta(hours=24), vault: TextVault | None = None,
    ):
        self.vault = vault or TextVault()  # masks what it stores; keeps no original unless configured
        self.bot = bot
        self.sessions = sessions
        self.match_chars = match_chars
        self.store_chars = store_chars
        self.handover = handover

    def _answer(self, event: InboundEvent, text: str, reply_id: str) -> Reply | None:
        """The bot's reply to one event (None: nothing to say, e.g. an echo)."""
        if event.kind == "echo":
            return None
        command = command_of(event)
        if command is not None:
            return self.bot.command(command, text, event.lang, reply_id, self.feedback)
        if event.kind == "attachment":
            return self.bot.media_only(event.lang)
        if event.kind in ("follow", "chatnow"):
            return self.bot.command(("GET_STARTED", ""), text, event.lang, reply_id, self.feedback)
        if event.kind == "choice" and event.payload:
            return self.bot.chosen(event.payload, text, event.lang)
        return self.bot.reply(text[: self.match_chars], event.lang)

    def handle(self, event: InboundEvent, limited: bool = False, notice: Reply | None = None) -> Handled | None:
        """Answer and log one event; None if this event was already handled (a retry).
        `limited`: the sender is over its rate limit: store the event, answer only with `notice`
        (the slow-down reply, once in a while) or not at all."""
        start = time.perf_counter()
        text = clean_text(event.text or event.payload or "", self.store_chars)
        reply_id = new_id()
        reply = notice if limited else self._answer(event, text, reply_id)  # matched on the original, in memory only
        stored_text, text_private = self.vault.seal(text)
        latency_ms = (time.perf_counter() - start) * 1000
        answer = reply
        for attempt in (1, 2):
            reply = answer  # a retried transaction starts again from the bot's answer
            try:
                with self.sessions() as session, session.begin():
                    lang = reply.lang if reply else (event.lang or "vi")
                    conversation = self._conversation(session, event, lang)
                    inbound = Message(
                        conversation_id=conversation.id, direction="in", channel=event.channel,
                        external_id=event.event_id, text=stored_text or f"[{event.kind}]", text_private=text_private,
                        lang=lang, kind="echo" if event.kind == "echo" else None,
                    )
                    session.add(inbound)
                    session.flush()  # a retried delivery fails here, on the unique event id
                    now = utcnow()
                    if event.kind == "echo":
                        # a person answered from the Page inbox / OA Manager: the bot steps back
                        # (unless the echo is of the bot's own reply: Zalo echoes those too)
                        if not self._own_echo(session, event, now):
                            self._pause(conversation, now)
                        reply = None
                    elif event.extra.get("standby") == "true":
                        reply = None  # another app (the Page inbox) owns the thread: keep, do not answer
                    elif conversation.state == "human" and conversation.paused_until and as_utc(conversation.paused_until) > now:
                        reply = None  # a person has this conversation: stay quiet, keep the message
                    elif reply is not None and reply.kind == "handover" and event.channel in TAKEOVER_CHANNELS:
                        self._pause(conversation, now)
                    if reply is not None:
                        outbound = Message(
                            id=reply_id, conversation_id=conversation.id, direction="out", channel=event.channel,
                            reply_to_id=inbound.id, text=reply.text, lang=reply.lang, kind=reply.kind,
                            entry_id=reply.intent_id, regime=reply.regime, confidence=reply.confidence,
                            candidates=reply.candidates, kb_version=reply.kb_version, latency_ms=round(latency_ms, 3),
                        )
                        session.add(outbound)
                        session.flush()
                        self._review(session, event, conversation, inbound, outbound, reply)
                        if event.channel in SENDING_CHANNELS:
                            opts = [{"title": o.title, "payload": o.payload} for o in options_for(reply, reply_id)]
                            session.add(Outbox(message_id=reply_id, channel=event.channel, recipient=event.user_id,
                                               payload={"text": reply.text, "options": opts, "lang": reply.lang}))
                    conversation.last_message_at = now
                    handled = Handled(reply, inbound.id, reply_id if reply else None, conversation.id)
            except IntegrityError:
                if self._seen(event):
                    log.info("duplicate_event", channel=event.channel, event_id=event.event_id)
                    return None
                if attempt == 2:
                    raise
                # Another process created this person's row (or conversation) at the same
                # moment: the transaction is rolled back whole; once more finds their rows.
                log.info("store_retry", channel=event.channel)
                continue
            break
        log.info(
            "answered" if reply else "stored", channel=event.channel, kind=reply.kind if reply else event.kind,
            intent=reply.intent_id if reply else None, confidence=reply.confidence if reply else None,
            latency_ms=round(latency_ms, 2), message_id=handled.reply_id,
        )
        if reply is not None:
            record_decision(event.channel, reply.kind)
        return handled

    def _seen(self, event: InboundEvent) -> bool:
        """Whether this platform event is already stored (a retried or doubled delivery)."""
        if event.event_id is None:
            return False
        with self.sessions() as session:
            return session.scalar(select(Message.id).where(
                Message.channel == event.channel, Message.external_id == event.event_id)) is not None

    @staticmethod
    def _review(session: Session, event: InboundEvent, conversation: Conversation, inbound: Message,
                outbound: Message, reply: Reply) -> None:
        """Queue a reply staff should see; a choice among offered options settles the clarify."""
        if event.channel not in REVIEW_CHANNELS:
            return
        if reply.candidates and reply.candidates[0].get("chosen"):
            for item in session.scalars(select(ReviewItem).where(
                ReviewItem.conversation_id == conversation.id, ReviewItem.reason == "clarify",
                ReviewItem.status == "open",
            )):
                item.status, item.action, item.resolved_by, item.resolved_at = "resolved", "chosen", "citizen", utcnow()
                item.detail = {"intent_id": reply.intent_id}
            return
        # Typed text only: a tapped button (e.g. "talk to staff") has no wording to teach from;
        # the handover inbox shows those conversations.
        if reply.kind == "fallback" and reply.intent_id:
            return  # a recognised out-of-scope topic, declined with its own reply: nothing to teach
        if reply.kind in REVIEW_KINDS and event.kind == "text" and inbound.text.strip():
            session.add(ReviewItem(message_id=outbound.id, question_id=inbound.id, conversation_id=conversation.id,
                                   channel=event.channel, reason=reply.kind, text=inbound.text))

    @staticmethod
    def _own_echo(session: Session, event: InboundEvent, now: datetime) -> bool:
        """An echo of a message the bot sent: its platform id is on an outbox row, or the bot
        sent this person something in the last seconds (the echo can outrun the send's answer)."""
        for row in session.execute(
            select(Outbox.platform_message_id, Outbox.sent_at, Outbox.status)
            .where(Outbox.channel == event.channel, Outbox.recipient == event.user_id)
            .order_by(Outbox.id.desc())
            .limit(20)
        ):
            ids = (row.platform_message_id or "").split(",")
            if event.event_id and event.event_id in ids:
                return True
            if row.status == "sending" or (row.sent_at and as_utc(row.sent_at) > now - OWN_ECHO_WINDOW):
                return True
        return False

    def _pause(self, conversation: Conversation, now: datetime) -> None:
        conversation.state = "human"
        conversation.paused_until = now + self.handover

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
        if conversation is None or as_utc(conversation.last_message_at) < now - CONVERSATION_IDLE:
            conversation = Conversation(person_id=person.id, channel=event.channel)
            session.add(conversation)
            session.flush()
        return conversation

    def release(self, conversation_id: int) -> bool:
        """Staff hand the conversation back to the bot."""
        with self.sessions() as session, session.begin():
            conversation = session.get(Conversation, conversation_id)
            if conversation is None:
                return False
            conversation.state, conversation.paused_until = "bot", None
        return True

    def feedback(self, message_id: str, helpful: bool, comment: str | None = None) -> bool:
        """Record (or replace) feedback on a bot reply; False if there is no such reply."""
        comment = mask_pii(comment) if comment else comment  # a citizen's free text, like a message
        with self.sessions() as session, session.begin():
            message = session.get(Message, message_id)
            if message is None or message.direction != "out":
                return False
            existing = session.scalar(select(Feedback).where(Feedback.message_id == message_id))
            if existing is None:
                session.add(Feedback(message_id=message_id, helpful=helpful, comment=comment))
            else:
                existing.helpful, existing.comment, existing.created_at = helpful, comment, utcnow()
            if not helpful and message.channel in REVIEW_CHANNELS:
                self._review_dislike(session, message)
        return True

    @staticmethod
    def _review_dislike(session: Session, reply: Message) -> None:
        """A thumbs-down puts the reply (back) in the review queue."""
        item = session.scalar(select(ReviewItem).where(ReviewItem.message_id == reply.id))
        question = session.get(Message, reply.reply_to_id) if reply.reply_to_id else None
        if item is None:
            session.add(ReviewItem(message_id=reply.id, question_id=question.id if question else None,
                                   conversation_id=reply.conversation_id, channel=reply.channel, reason="dislike",
                                   text=question.text if question else reply.text))
        else:
            item.reason, item.status, item.action, item.resolved_by, item.resolved_at = "dislike", "open", None, None, None

