"""The dispatcher: claims due outbox rows, sends them through their channel, records the outcome.

A row is claimed with a lease: on PostgreSQL by `SELECT ... FOR UPDATE SKIP LOCKED` (several
worker processes share the queue without waiting on each other), on SQLite by a conditional UPDATE
(status and lease checked in the WHERE clause); either way two dispatchers never send the same row
at the same time, and a claim whose process died expires with its lease and the row is taken again.
Transient failures are retried with exponential backoff and jitter; permanent ones are recorded
with the platform's reason and not retried.
"""
from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from app.db.claims import claim_ids
from app.db.models import Outbox, utcnow
from app.observability import record_delivery
from webhooks.base import Option, OutboundMessage, SendResult

log = structlog.get_logger(__name__)

Sender = Callable[[httpx.AsyncClient, OutboundMessage], Awaitable[SendResult]]


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay: float = 1.0  # seconds before the first retry; doubles each time
    max_delay: float = 300.0
    lease: float = 60.0  # seconds a claim lasts before another dispatcher may take the row

    def delay(self, attempts: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1)) * random.uniform(0.5, 1.5)


def _due(now: datetime):  # type: ignore[no-untyped-def]
    return or_(
        and_(Outbox.status == "pending", Outbox.next_attempt_at <= now),
        and_(Outbox.status == "sending", Outbox.lease_until < now),
    )


class Dispatcher:
    def __init__(self, sessions: sessionmaker[Session], senders: dict[str, Sender], policy: RetryPolicy | None = None,
                 interval: float = 0.2, batch: int = 50):
        self.sessions = sessions
        self.senders = senders
        self.policy = policy or RetryPolicy()
        self.interval = interval
        self.batch = batch
        self.wake = asyncio.Event()

    def claim(self) -> list[Outbox]:
        """Take due rows for this process (each with a fresh lease)."""
        now = utcnow()
        lease = {"status": "sending", "lease_until": now + timedelta(seconds=self.policy.lease)}
        with self.sessions() as session, session.begin():
            claimed = claim_ids(session, Outbox, and_(_due(now), Outbox.channel.in_(self.senders)), lease, self.batch)
            rows = session.scalars(select(Outbox).where(Outbox.id.in_(claimed)).order_by(Outbox.id)).all() if claimed else []
            session.expunge_all()
        return list(rows)

    def record_all(self, outcomes: list[tuple[Outbox, SendResult]]) -> None:
        """The outcomes of one round of sends, in one transaction (one commit, not one per row)."""
        now = utcnow()
        recorded: list[tuple[Outbox, SendResult, str]] = []
        with self.sessions() as session, session.begin():
            for row, result in outcomes:
                current = session.get(Outbox, row.id)
                if current is not None:
                    recorded.append((row, result, self._apply(current, result, now)))
        for row, result, outcome in recorded:
            record_delivery(row.channel, outcome, result.error)
            level = "info" if result.ok else ("warning" if result.retryable else "error")
            getattr(log, level)("outbox_send", channel=row.channel, outbox_id=row.id, ok=result.ok,
                                retryable=result.retryable, error=result.error, attempt=row.attempts + 1)

    def _apply(self, current: Outbox, result: SendResult, now: datetime) -> str:
        """Update a row with what its send did: sent, retry (pending again, after a backoff) or failed."""
        current.attempts += 1
        current.lease_until = None
        if result.parts_sent > (current.payload or {}).get("parts_sent", 0):
            current.payload = {**(current.payload or {}), "parts_sent": result.parts_sent}
        if result.ok:
            current.status, current.sent_at = "sent", now
            current.platform_message_id = result.platform_message_id
            current.last_error = None
        elif result.retryable and current.attempts < self.policy.max_attempts:
            current.status = "pending"
            current.next_attempt_at = now + timedelta(seconds=self.policy.delay(current.attempts))
            current.last_error = result.error
        else:
            current.status, current.last_error = "failed", result.error or "failed"
        return "retry" if current.status == "pending" else current.status

    async def _send(self, client: httpx.AsyncClient, row: Outbox) -> SendResult:
        payload = row.payload or {}
        msg = OutboundMessage(
            channel=row.channel, user_id=row.recipient, text=payload.get("text", ""),
            options=tuple(Option(o["title"], o["payload"]) for o in payload.get("options", [])),
            lang=payload.get("lang", "vi"), skip_parts=int(payload.get("parts_sent", 0)),
            tag=payload.get("tag") or None,  # set on a staff reply outside Messenger's 24 h window
        )
        try:
            return await self.senders[row.channel](client, msg)
        except Exception as exc:  # noqa: BLE001 - a sender bug must not stop the dispatcher
            log.exception("outbox_sender_error", channel=row.channel, outbox_id=row.id)
            return SendResult(ok=False, retryable=True, error=f"{type(exc).__name__}: {exc}")

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Send the claimed rows: one person's in order, different people's at the same time (a
        burst of replies is as slow as its slowest person, not the sum of all sends); then record
        every outcome in one transaction."""
        rows = await asyncio.to_thread(self.claim)
        if not rows:
            return 0
        queues: dict[tuple[str, str], list[Outbox]] = {}
        for row in rows:
            queues.setdefault((row.channel, row.recipient), []).append(row)
        outcomes: list[tuple[Outbox, SendResult]] = []

        async def send_in_order(queue: list[Outbox]) -> None:
            for row in queue:
                outcomes.append((row, await self._send(client, row)))

        try:
            await asyncio.gather(*(send_in_order(q) for q in queues.values()))
        finally:  # what was sent is recorded even if this task is cancelled (shutdown)
            await asyncio.shield(asyncio.to_thread(self.record_all, outcomes))
        return len(rows)

    async def run(self, stop: asyncio.Event, client: httpx.AsyncClient | None = None) -> None:
        """Send until `stop` is set; sleeps `interval` (or until woken) when nothing is due."""
        own = client is None
        client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        try:
            while not stop.is_set():
                try:
                    sent = await self.run_once(client)
                except Exception:  # noqa: BLE001 - e.g. the database is away: try again shortly
                    log.exception("outbox_loop_error")
                    sent = 0
                if not sent:
                    self.wake.clear()
                    try:
                        await asyncio.wait_for(self.wake.wait(), timeout=self.interval)
                    except TimeoutError:
                        pass
        finally:
            if own:
                await client.aclose()
