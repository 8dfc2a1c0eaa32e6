"""The dashboard's figures: plain functions over a database session and a period (no web code)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import Date

from app.console.grouping import Group, group_items
from app.db.models import Conversation, Feedback, Message, Person, ReviewItem, utcnow

# Vietnam has kept UTC+7 without daylight saving since 1975, so a fixed offset is exactly
# Asia/Ho_Chi_Minh, needs no tz database (Python's or the server's), and reads the same in SQL.
VN = timezone(timedelta(hours=7), "ICT")
VN_OFFSET_HOURS = 7
MAX_DAYS = 366  # a period longer than a year would make an unreadable chart and a slow page
KNOWN_CHANNELS = ("web", "messenger", "zalo", "cli")
# The bot's own replies, in the order the dashboard shows them. Staff replies (kind "staff") and
# echoes of messages the Page/OA sent are not bot decisions.
DECISION_KINDS = ("faq", "clarify", "fallback", "handover", "smalltalk", "out_of_scope")
GROUPING_LIMIT = 5000  # the newest open items grouped: bounds the page's work on a huge backlog


# --- Days in Vietnam time ----------------------------------------------------------------------


class local_date(FunctionElement[date]):  # noqa: N801 (an SQL function, named like one)
    """SQL: the calendar day in Vietnam of a UTC timestamp column."""

    type = Date()
    inherit_cache = True


@compiles(local_date, "sqlite")
def _local_date_sqlite(element: local_date, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite stores the UTC wall time as text ("2026-11-24 20:00:00.000000"): shift, then cut.
    return f"date({compiler.process(element.clauses, **kw)}, '+{VN_OFFSET_HOURS} hours')"


@compiles(local_date)
def _local_date_default(element: local_date, compiler: SQLCompiler, **kw: Any) -> str:
    # PostgreSQL (timestamptz): the UTC wall time plus 7 hours. A literal interval, not a bound
    # parameter, so GROUP BY sees the same expression as SELECT.
    col = compiler.process(element.clauses, **kw)
    return f"CAST(({col} AT TIME ZONE 'UTC') + INTERVAL '{VN_OFFSET_HOURS} hours' AS DATE)"


def as_day(value: date | str) -> date:
    """A day as SQLite (text) or PostgreSQL (date) returns it."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return date.fromisoformat(str(value)[:10])


def vn_day(moment: datetime) -> date:
    """The calendar day in Vietnam of a moment (naive datetimes are UTC, as SQLite returns them)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(VN).date()


def vn_today(now: datetime | None = None) -> date:
    return vn_day(now or utcnow())


@dataclass(frozen=True)
class Period:
    """Whole calendar days in Vietnam, `start` to `end` inclusive, optionally one channel."""

    start: date
    end: date
    channel: str | None = None

    @classmethod
    def last(cls, days: int, channel: str | None = None, today: date | None = None) -> Period:
        """The last `days` days, today included."""
        end = today or vn_today()
        return cls(end - timedelta(days=max(days, 1) - 1), end, channel)

    @property
    def since(self) -> datetime:
        """The first moment of the period, in UTC (bound values must be UTC: SQLite drops zones)."""
        return datetime.combine(self.start, time(), VN).astimezone(timezone.utc)

    @property
    def until(self) -> datetime:
        """The first moment after the period, in UTC."""
        return datetime.combine(self.end + timedelta(days=1), time(), VN).astimezone(timezone.utc)

    @property
    def days(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    def covers(self, column: Any) -> ColumnElement[bool]:
        return and_(column >= self.since, column < self.until)


def _in_period(query: Select[Any], period: Period, created: Any, channel: Any) -> Select[Any]:
    query = query.where(period.covers(created))
    return query.where(channel == period.channel) if period.channel else query


# --- Messages per day --------------------------------------------------------------------------


@dataclass
class DailyCounts:
    """Inbound messages per day and channel, every day of the period present (zeros too)."""

    days: list[date]
    channels: list[str]
    counts: dict[tuple[date, str], int] = field(default_factory=dict)

    def count(self, day: date, channel: str) -> int:
        return self.counts.get((day, channel), 0)

    def day_total(self, day: date) -> int:
        return sum(self.count(day, c) for c in self.channels)

    def channel_total(self, channel: str) -> int:
        return sum(self.count(d, channel) for d in self.days)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def peak(self) -> int:
        return max((self.day_total(d) for d in self.days), default=0)


def messages_per_day(db: Session, period: Period) -> DailyCounts:
    """Citizens' messages (inbound, echoes excluded) per Vietnam day and channel.

    Counted in SQL, grouped by a day expression compiled for each database (see `local_date`):
    a busy period holds millions of messages, while the result has at most days x channels rows."""
    day = local_date(Message.created_at)
    query = select(day, Message.channel, func.count()).where(
        Message.direction == "in", or_(Message.kind.is_(None), Message.kind != "echo"))
    rows = db.execute(_in_period(query, period, Message.created_at, Message.channel).group_by(day, Message.channel))
    counts = {(as_day(d), ch): n for d, ch, n in rows}
    seen = {ch for _, ch in counts}
    channels = [c for c in KNOWN_CHANNELS if c in seen] + sorted(seen - set(KNOWN_CHANNELS))
    return DailyCounts(period.days, channels, counts)


# --- Decisions, feedback, entries, regimes -----------------------------------------------------


@dataclass
class Shares:
    """Counts by category, with each one's share of the total."""

    counts: list[tuple[str, int]]

    @property
    def total(self) -> int:
        return sum(n for _, n in self.counts)

    def count(self, key: str) -> int:
        return dict(self.counts).get(key, 0)

    def share(self, key: str) -> float:
        return self.count(key) / self.total if self.total else 0.0


def decision_of(kind: str, has_entry: bool) -> str:
    """A reply's decision. A declined topic is stored as a fallback that names its out-of-scope
    entry (a true fallback names none), so it is told apart by having an entry id."""
    return "out_of_scope" if kind == "fallback" and has_entry else kind


def _bot_replies(query: Select[Any], period: Period) -> Select[Any]:
    query = query.where(Message.direction == "out", Message.kind.in_(DECISION_KINDS))
    return _in_period(query, period, Message.created_at, Message.channel)


def decisions(db: Session, period: Period) -> Shares:
    """The bot's replies by decision: answered (faq), clarify, fallback, handover, small talk,
    out of scope; every kind listed, in that order, zeros too."""
    has_entry = Message.entry_id.is_not(None)
    # Grouped by plain columns, classified in Python: a CASE with bound values in GROUP BY is not
    # the "same expression" as in SELECT for PostgreSQL.
    query = _bot_replies(select(Message.kind, has_entry, func.count()), period).group_by(Message.kind, has_entry)
    counts: dict[str, int] = {}
    for kind, entry, n in db.execute(query):
        key = decision_of(kind, bool(entry))
        counts[key] = counts.get(key, 0) + int(n)
    extra = sorted(k for k in counts if k not in DECISION_KINDS)
    return Shares([(k, counts.get(k, 0)) for k in (*DECISION_KINDS, *extra)])


@dataclass(frozen=True)
class FeedbackFigures:
    up: int
    down: int

    @property
    def rated(self) -> int:
        return self.up + self.down

    @property
    def helpful_share(self) -> float | None:
        """Helpful among rated replies; None when nothing was rated."""
        return self.up / self.rated if self.rated else None


def feedback(db: Session, period: Period) -> FeedbackFigures:
    """Thumbs up / down on the bot's replies sent in the period (the latest tap counts)."""
    query = select(Feedback.helpful, func.count()).join(Message, Message.id == Feedback.message_id)
    rows = dict(db.execute(_in_period(query, period, Message.created_at, Message.channel).group_by(Feedback.helpful)).all())
    return FeedbackFigures(up=int(rows.get(True, 0)), down=int(rows.get(False, 0)))


def top_entries(db: Session, period: Period, limit: int = 10) -> list[tuple[str, int]]:
    """The entries answered most often. Answers only (faq): greetings and thanks would crowd the
    list and say nothing about what people need to know."""
    query = select(Message.entry_id, func.count().label("n")).where(
        Message.direction == "out", Message.kind == "faq", Message.entry_id.is_not(None))
    query = _in_period(query, period, Message.created_at, Message.channel)
    rows = db.execute(query.group_by(Message.entry_id).order_by(func.count().desc(), Message.entry_id).limit(limit))
    return [(entry_id, int(n)) for entry_id, n in rows]


def regimes(db: Session, period: Period) -> list[tuple[str, int]]:
    """Answers per regime, most asked first."""
    query = select(Message.regime, func.count()).where(
        Message.direction == "out", Message.kind == "faq", Message.regime.is_not(None))
    query = _in_period(query, period, Message.created_at, Message.channel)
    rows = db.execute(query.group_by(Message.regime).order_by(func.count().desc(), Message.regime))
    return [(regime, int(n)) for regime, n in rows]


# --- Latency -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyFigures:
    """Milliseconds from receiving a message to having the reply (None: no replies)."""

    count: int
    p50: float | None
    p95: float | None
    max: float | None


def nearest_rank(p: float, n: int) -> int:
    """The 0-based index of the p-th percentile (0 < p <= 100) among n sorted values."""
    return min(max(math.ceil(p / 100 * n) - 1, 0), n - 1)


def latency(db: Session, period: Period) -> LatencyFigures:
    """p50, p95 and max of the bot replies' latency. Percentiles by nearest rank, each read with
    ORDER BY ... OFFSET k LIMIT 1: the same SQL on SQLite (no percentile function) and PostgreSQL,
    and no million-row fetch into Python."""
    base = _bot_replies(select(Message.latency_ms), period).where(Message.latency_ms.is_not(None))
    n, top = db.execute(select(func.count(), func.max(base.subquery().c.latency_ms))).one()
    if not n:
        return LatencyFigures(0, None, None, None)

    def at(p: float) -> float:
        return float(db.scalar(base.order_by(Message.latency_ms).offset(nearest_rank(p, n)).limit(1)) or 0.0)

    return LatencyFigures(int(n), at(50), at(95), float(top))


# --- Unanswered groups and the state of things now ---------------------------------------------


def unanswered_groups(db: Session, period: Period, limit: int = 5) -> list[Group]:
    """The largest groups of open review items created in the period (same text, one decision)."""
    query = select(ReviewItem).where(ReviewItem.status == "open")
    query = _in_period(query, period, ReviewItem.created_at, ReviewItem.channel)
    items = db.scalars(query.order_by(ReviewItem.created_at.desc()).limit(GROUPING_LIMIT)).all()
    return group_items(items)[:limit]


def open_review_items(db: Session, channel: str | None = None) -> int:
    """Open review items now, whenever they came in."""
    query = select(func.count()).select_from(ReviewItem).where(ReviewItem.status == "open")
    if channel:
        query = query.where(ReviewItem.channel == channel)
    return int(db.scalar(query) or 0)


def taken_over(db: Session, channel: str | None = None, now: datetime | None = None) -> int:
    """Conversations a person has now (state human). One whose pause has run out is answered by
    the bot again, so it is not counted even if nobody released it."""
    now = now or utcnow()
    query = select(func.count()).select_from(Conversation).where(
        Conversation.state == "human", or_(Conversation.paused_until.is_(None), Conversation.paused_until > now))
    if channel:
        query = query.where(Conversation.channel == channel)
    return int(db.scalar(query) or 0)


def channels(db: Session) -> list[str]:
    """Channels for the filter: the known ones and any other seen (people are few next to messages)."""
    seen = set(db.scalars(select(Person.channel).distinct()))
    return list(KNOWN_CHANNELS) + sorted(seen - set(KNOWN_CHANNELS))


@dataclass
class Figures:
    """Everything the dashboard shows for one period."""

    period: Period
    daily: DailyCounts
    decisions: Shares
    feedback: FeedbackFigures
    top_entries: list[tuple[str, int]]
    regimes: list[tuple[str, int]]
    latency: LatencyFigures
    groups: Sequence[Group]
    taken_over: int
    open_items: int


def figures(db: Session, period: Period, now: datetime | None = None) -> Figures:
    return Figures(
        period=period, daily=messages_per_day(db, period), decisions=decisions(db, period),
        feedback=feedback(db, period), top_entries=top_entries(db, period), regimes=regimes(db, period),
        latency=latency(db, period), groups=unanswered_groups(db, period),
        taken_over=taken_over(db, period.channel, now), open_items=open_review_items(db, period.channel),
    )
