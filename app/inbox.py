"""The webhook inbox: a verified delivery is stored before the platform gets its 200, and answered
from the database afterwards.

Why: the acknowledgement should cost as little as possible (a platform that waits retries, and a
slow webhook gets disabled), and must not lose what it acknowledged. So the route only verifies,
and `Inbox.put` waits until the raw body is committed. Puts that arrive while a commit is under
way are written together in the next one (group commit: one transaction for many deliveries).
The processor claims stored deliveries like the outbox does (app/db/claims.py: a lease lets
another process retake what a crashed one held) and hands each to `process` (parse, rate limits, pipeline: app/ingest.py), which is
idempotent per platform event id, so a delivery processed twice is answered once.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

import structlog
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db.claims import claim_ids
from app.db.models import InboxDelivery, utcnow

log = structlog.get_logger(__name__)

Process = Callable[[str, str], int]  # (channel, raw body) -> events answered; raises to retry later
MAX_ATTEMPTS = 5
ACK_QUIET = 0.05  # seconds without a new delivery before a serving process answers (see _acks_first)
ACK_MAX_DEFER = 1.0  # ... but never waits longer than this per batch
COMMIT_WAIT = 0.05  # at most this long for the deliveries' commit due before each answer (_commits_first)


def _due(now):  # type: ignore[no-untyped-def]
    """Pending, and either unclaimed and due, or claimed by a process whose lease ran out."""
    return and_(InboxDelivery.status == "pending", or_(
        and_(InboxDelivery.lease_until.is_(None), InboxDelivery.next_attempt_at <= now),
        InboxDelivery.lease_until < now,
    ))


class Inbox:
    def __init__(self, sessions: sessionmaker[Session], process: Process | None = None, *, batch: int = 50,
                 interval: float = 0.2, lease: float = 60.0, ack_quiet: float = ACK_QUIET,
                 ack_max_defer: float = ACK_MAX_DEFER, commit_wait: float = COMMIT_WAIT):
        self.sessions = sessions
        self.process = process
        self.batch = batch
        self.interval = interval
        self.lease = lease
        self.ack_quiet = ack_quiet
        self.ack_max_defer = ack_max_defer
        self.commit_wait = commit_wait
        self.wake = asyncio.Event()  # a new delivery is stored: process now
        self.on_processed: Callable[[], None] | None = None  # e.g. wake the outbox dispatcher
        self._pending: list[tuple[str, str, asyncio.Future[None]]] = []
        self._kick = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._committing = False  # a group commit is under way
        self._commits = 0  # group commits done (ended), for _commits_first
        self.last_put = 0.0  # time.monotonic() of the latest delivery stored by this process

    # --- storing (the request path) -----------------------------------------------------------

    async def put(self, channel: str, body: str) -> None:
        """Return once the delivery is committed (raises if it could not be: no 200 then)."""
        self.last_put = time.monotonic()
        if self._writer is None or self._writer.done():
            await asyncio.to_thread(self._insert, [(channel, body)])  # no writer task (a test, a CLI)
            self.wake.set()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((channel, body, future))
        self._kick.set()
        await future

    def _insert(self, rows: list[tuple[str, str]]) -> None:
        now = utcnow()
        with self.sessions() as session, session.begin():
            # Core, not the ORM's bulk path (cheaper); RETURNING makes SQLAlchemy send one multi-row
            # INSERT ("insertmanyvalues") where psycopg would otherwise run one INSERT per row.
            session.execute(insert(InboxDelivery.__table__).returning(InboxDelivery.id), [
                {"channel": c, "body": b, "received_at": now, "next_attempt_at": now, "status": "pending", "attempts": 0}
                for c, b in rows
            ]).all()

    async def _write(self, stop: asyncio.Event) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            batch, self._pending = self._pending, []
            if batch:
                self._committing = True
                try:
                    await asyncio.to_thread(self._insert, [(c, b) for c, b, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each waiting request gets the error (a 503)
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                else:
                    for _, _, future in batch:
                        if not future.done():
                            future.set_result(None)
                    self.wake.set()
                finally:
                    self._committing = False
                    self._commits += 1
            if stop.is_set() and not self._pending:
                return

    # --- processing ---------------------------------------------------------------------------

    def claim(self) -> list[InboxDelivery]:
        now = utcnow()
        lease = {"lease_until": now + timedelta(seconds=self.lease)}
        with self.sessions() as session, session.begin():
            claimed = claim_ids(session, InboxDelivery, _due(now), lease, self.batch)
            rows = list(session.scalars(
                select(InboxDelivery).where(InboxDelivery.id.in_(claimed)).order_by(InboxDelivery.id)).all())
            session.expunge_all()
        return rows

    def process_one(self, row: InboxDelivery) -> int:
        """Answer one claimed delivery; a processed one is deleted (the conversation log keeps what
        it said), a failing one is retried later and kept as failed in the end."""
        assert self.process is not None
        try:
            answered = self.process(row.channel, row.body)
        except Exception as exc:  # noqa: BLE001 - recorded on the row, retried later
            self._failed(row, exc)
            return 0
        with self.sessions() as session, session.begin():
            session.execute(delete(InboxDelivery).where(InboxDelivery.id == row.id))
        return answered

    def _failed(self, row: InboxDelivery, exc: Exception) -> None:
        attempts = row.attempts + 1
        gave_up = attempts >= MAX_ATTEMPTS
        log.error("inbox_failed", inbox_id=row.id, channel=row.channel, attempts=attempts, gave_up=gave_up,
                  error=type(exc).__name__, exc_info=True)
        with self.sessions() as session, session.begin():
            session.execute(update(InboxDelivery).where(InboxDelivery.id == row.id).values(
                attempts=attempts, lease_until=None, last_error=f"{type(exc).__name__}: {exc}"[:1000],
                status="failed" if gave_up else "pending",
                next_attempt_at=utcnow() + timedelta(seconds=2 ** attempts)))

    def drain(self) -> int:
        """Process everything due now (tests and the CLI; the server runs `run`)."""
        total = 0
        while rows := self.claim():
            total += sum(self.process_one(row) for row in rows)
        return total

    async def _acks_first(self, deadline: float) -> None:
        """While this process is acknowledging deliveries, wait (until `deadline` at most).

        Answering costs far more CPU than acknowledging, and a burst of deliveries must get its
        200s fast (a platform that waits retries, and disables a slow webhook). So a serving process
        that also answers pauses between deliveries while puts keep arriving, and catches up when the
        burst has passed; the deadline keeps it answering under sustained load. A `vssbot worker`
        stores nothing, so it never waits."""
        while time.monotonic() - self.last_put < self.ack_quiet and time.monotonic() < deadline:
            await asyncio.sleep(self.ack_quiet / 2)
        await self._commits_first()

    async def _commits_first(self) -> None:
        """Under sustained load (past the deadline) still let waiting deliveries be committed before
        the next answer's transaction starts: on SQLite both need the one write lock, and a commit
        that finds it taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10, ... ms between
        tries; each acknowledgement then waits for at most the one answer already under way.
        Only for the commits due now, and `commit_wait` at most: a steady stream of puts must not
        starve answering."""
        due = int(self._committing) + int(bool(self._pending))
        target, give_up = self._commits + due, time.monotonic() + self.commit_wait
        while self._commits < target and time.monotonic() < give_up:
            await asyncio.sleep(0.001)

    async def _process(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                deadline = time.monotonic() + self.ack_max_defer
                await self._acks_first(deadline)
                rows = await asyncio.to_thread(self.claim)
                for row in rows:
                    await self._acks_first(deadline)
                    if await asyncio.to_thread(self.process_one, row) and self.on_processed:
                        self.on_processed()  # wake the dispatcher: this reply can go out now
                if rows:
                    continue  # there may be more
            except Exception as exc:  # noqa: BLE001 - a database hiccup must not end the loop
                log.warning("inbox_poll_failed", error=f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=self.interval)
            except TimeoutError:
                pass
            self.wake.clear()

    async def run(self, stop: asyncio.Event, write: bool = True, answer: bool = True) -> None:
        """The writer (group commits for `put`) and, when `answer` and there is a `process`, the
        processor."""
        tasks = []
        if write:
            self._writer = asyncio.create_task(self._write(stop))
            tasks.append(self._writer)
        if answer and self.process is not None:
            tasks.append(asyncio.create_task(self._process(stop)))
        await stop.wait()
        self._kick.set()
        self.wake.set()
        await asyncio.gather(*tasks, return_exceptions=True)
