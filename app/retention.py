"""A person's data on request (export, erase) and the retention purge (Decree 13/2023/ND-CP)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from app import audit
from app.db.models import Conversation, Feedback, Message, Outbox, Person, ReviewItem, as_utc, utcnow
from app.privacy import TextVault

EXPORT_FORMAT = "vssbot-privacy-export/1"
MAX_DAYS = 36500  # a hundred years: beyond it the date arithmetic overflows, and nobody means it


class UnknownPerson(LookupError):
    """Nobody with this user id wrote on this channel."""

    def __init__(self, channel: str, external_id: str):
        super().__init__(f"nobody with user id {external_id!r} on channel {channel!r} is in the conversation log")


@dataclass
class Counts:
    """Rows per table, of what an erase or a purge deletes (or would delete)."""

    people: int = 0
    conversations: int = 0
    messages: int = 0
    feedback: int = 0
    outbox: int = 0
    review_items: int = 0

    def __iadd__(self, other: Counts) -> Counts:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        return self

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def __str__(self) -> str:
        return ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in asdict(self).items())


def _iso(dt: datetime | None) -> str | None:
    return as_utc(dt).isoformat() if dt else None


def find_person(db: Session, channel: str, external_id: str) -> Person:
    person = db.scalar(select(Person).where(Person.channel == channel, Person.external_id == external_id))
    if person is None:
        raise UnknownPerson(channel, external_id)
    return person


# --- Export ----------------------------------------------------------------------------------------


def export_person(db: Session, person: Person, vault: TextVault) -> dict[str, Any]:
    """Everything the bot holds about one person, as one JSON-ready document. Stored originals are
    decrypted when the vault has the key (PrivacyError if the key is the wrong one)."""
    conversations = db.scalars(
        select(Conversation).where(Conversation.person_id == person.id).order_by(Conversation.started_at, Conversation.id)
    ).all()
    conv_ids = [c.id for c in conversations]
    messages = db.scalars(
        select(Message).where(Message.conversation_id.in_(conv_ids)).order_by(Message.created_at, Message.direction)
    ).all() if conv_ids else []
    msg_ids = [m.id for m in messages]
    feedback = {f.message_id: f for f in db.scalars(select(Feedback).where(Feedback.message_id.in_(msg_ids)))} if msg_ids else {}
    outbox = {o.message_id: o for o in db.scalars(select(Outbox).where(Outbox.message_id.in_(msg_ids)))} if msg_ids else {}
    reviews = db.scalars(
        select(ReviewItem).where(ReviewItem.conversation_id.in_(conv_ids)).order_by(ReviewItem.created_at)
    ).all() if conv_ids else []

    originals = {"stored": 0, "decrypted": 0}

    def message(m: Message) -> dict[str, Any]:
        row: dict[str, Any] = {"id": m.id, "direction": m.direction, "at": _iso(m.created_at), "text": m.text,
                               "lang": m.lang}
        if m.text_private:
            originals["stored"] += 1
            row["original"] = vault.open(m.text_private) if vault.can_decrypt else None
            originals["decrypted"] += row["original"] is not None
        if m.direction == "out":
            row["reply_to"] = m.reply_to_id
            row["decision"] = {"kind": m.kind, "entry_id": m.entry_id, "regime": m.regime,
                               "confidence": m.confidence, "kb_version": m.kb_version, "candidates": m.candidates,
                               "author": m.author}
            if (f := feedback.get(m.id)) is not None:
                row["feedback"] = {"helpful": f.helpful, "comment": f.comment, "at": _iso(f.created_at)}
            if (o := outbox.get(m.id)) is not None:
                row["delivery"] = {"status": o.status, "attempts": o.attempts, "sent_at": _iso(o.sent_at),
                                   "error": o.last_error}
        elif m.kind:
            row["kind"] = m.kind
        return row

    by_conv: dict[int, list[dict[str, Any]]] = {cid: [] for cid in conv_ids}
    for m in messages:
        by_conv[m.conversation_id].append(message(m))
    return {
        "format": EXPORT_FORMAT,
        "exported_at": _iso(utcnow()),
        "person": {"channel": person.channel, "user_id": person.external_id, "lang": person.lang,
                   "first_seen": _iso(person.first_seen), "last_seen": _iso(person.last_seen)},
        "conversations": [
            {"id": c.id, "channel": c.channel, "started_at": _iso(c.started_at),
             "last_message_at": _iso(c.last_message_at), "handled_by": c.state, "messages": by_conv[c.id]}
            for c in conversations
        ],
        "review_items": [
            {"conversation_id": r.conversation_id, "message_id": r.message_id, "reason": r.reason, "text": r.text,
             "status": r.status, "action": r.action, "at": _iso(r.created_at)}
            for r in reviews
        ],
        "originals": originals,
    }


# --- Deleting conversations and what hangs off them ------------------------------------------------


# Conversations are named by a list of ids (a purge batch) or a query (a person's, all stale ones):
# a query keeps a big purge from passing more parameters than the database takes.
ConversationIds = Sequence[int] | Select[tuple[int]]


def _message_ids(conv_ids: ConversationIds) -> Select[tuple[str]]:
    return select(Message.id).where(Message.conversation_id.in_(conv_ids))


def _child_filters(conv_ids: ConversationIds) -> dict[type, Any]:
    """The rows of each child table that belong to these conversations."""
    msgs = _message_ids(conv_ids)
    return {
        Feedback: Feedback.message_id.in_(msgs),
        Outbox: Outbox.message_id.in_(msgs),
        ReviewItem: or_(ReviewItem.conversation_id.in_(conv_ids), ReviewItem.message_id.in_(msgs),
                        ReviewItem.question_id.in_(msgs)),
        Message: Message.conversation_id.in_(conv_ids),
    }


_COUNT_FIELD = {Feedback: "feedback", Outbox: "outbox", ReviewItem: "review_items", Message: "messages"}


def count_conversations(db: Session, conv_ids: ConversationIds) -> Counts:
    counts = Counts(conversations=db.scalar(
        select(func.count()).select_from(Conversation).where(Conversation.id.in_(conv_ids))) or 0)
    if counts.conversations:
        for model, where in _child_filters(conv_ids).items():
            setattr(counts, _COUNT_FIELD[model], db.scalar(select(func.count()).select_from(model).where(where)) or 0)
    return counts


def delete_conversations(db: Session, conv_ids: ConversationIds) -> Counts:
    """Delete these conversations and everything hanging off them, children first (explicitly, so
    nothing depends on SQLite's foreign-key pragma and the counts are exact)."""
    counts = Counts()
    if isinstance(conv_ids, Sequence) and not conv_ids:
        return counts
    for model, where in _child_filters(conv_ids).items():  # dict order: messages last
        result = db.execute(delete(model).where(where).execution_options(synchronize_session=False))
        setattr(counts, _COUNT_FIELD[model], result.rowcount)
    result = db.execute(delete(Conversation).where(Conversation.id.in_(conv_ids))
                        .execution_options(synchronize_session=False))
    counts.conversations = result.rowcount
    return counts


def _person_conversations(person: Person) -> Select[tuple[int]]:
    return select(Conversation.id).where(Conversation.person_id == person.id)


def erase_counts(db: Session, person: Person) -> Counts:
    """What `erase_person` would delete."""
    counts = count_conversations(db, _person_conversations(person))
    counts.people = 1
    return counts


def erase_person(db: Session, person: Person) -> Counts:
    """Delete the person and everything about them (the caller commits, with its audit row)."""
    # lock the person first: a message arriving meanwhile waits, then finds nobody (PostgreSQL)
    db.execute(select(Person.id).where(Person.id == person.id).with_for_update())
    counts = delete_conversations(db, _person_conversations(person))
    counts.people = db.execute(delete(Person).where(Person.id == person.id)
                               .execution_options(synchronize_session=False)).rowcount
    db.expunge(person)
    return counts


# --- Retention purge -------------------------------------------------------------------------------


def cutoff_for(days: int, now: datetime | None = None) -> datetime:
    if not 1 <= days <= MAX_DAYS:
        raise ValueError(f"--older-than must be a whole number of days from 1 to {MAX_DAYS}")
    return (now or utcnow()) - timedelta(days=days)


def _stale(cutoff: datetime) -> Select[tuple[int]]:
    return select(Conversation.id).where(Conversation.last_message_at < cutoff)


def _leaving(cutoff: datetime) -> Any:
    """People not seen since the cutoff and with no conversation after it: once their stale
    conversations are gone, their user id is all that would be left."""
    return Person.last_seen < cutoff, ~exists().where(
        Conversation.person_id == Person.id, Conversation.last_message_at >= cutoff)


def purge_counts(db: Session, cutoff: datetime) -> Counts:
    """What `purge` would delete."""
    counts = count_conversations(db, _stale(cutoff))
    counts.people = db.scalar(select(func.count()).select_from(Person).where(*_leaving(cutoff))) or 0
    return counts


def purge(db: Session, cutoff: datetime, batch: int = 500,
          progress: Callable[[Counts], None] | None = None, into: Counts | None = None) -> Counts:
    """Delete conversations whose last message is older than the cutoff, with their messages,
    feedback, outbox and review rows, then the people left with nothing; one transaction per
    batch, so a long purge never holds locks for long and an interruption keeps what was done
    (and `into`, the running total, says how much)."""
    total = into if into is not None else Counts()
    while True:
        ids = list(db.scalars(_stale(cutoff).order_by(Conversation.id).limit(batch).with_for_update(skip_locked=True)))
        if not ids:
            break
        total += delete_conversations(db, ids)
        db.commit()
        if progress:
            progress(total)
    while True:
        ids = list(db.scalars(select(Person.id).where(*_leaving(cutoff), ~exists().where(Conversation.person_id == Person.id))
                              .order_by(Person.id).limit(batch)
                              .with_for_update(skip_locked=True)))
        if not ids:
            break
        total.people += db.execute(delete(Person).where(Person.id.in_(ids))
                                   .execution_options(synchronize_session=False)).rowcount
        db.commit()
        if progress:
            progress(total)
    return total


def record(db: Session, actor: str, action: str, target: str | None, counts: Counts, **extra: Any) -> None:
    """The audit row of an export, erase or purge (the caller commits)."""
    audit.record(db, actor, action, target, after={**counts.as_dict(), **extra})
