"""The webhook inbox: what the platform got a 200 for is stored first, answered once from the
database, retried when answering fails, and taken over by another process when one dies."""
from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select, update

from app.db.models import InboxDelivery, Message, Outbox, utcnow
from app.inbox import MAX_ATTEMPTS, Inbox
from app.services import Services
from tests.test_channels import PAGE_ID


def delivery(sender: str, mid: str, text: str) -> str:
    import json

    return json.dumps({"object": "page", "entry": [{"id": PAGE_ID, "time": 1, "messaging": [{
        "sender": {"id": sender}, "recipient": {"id": PAGE_ID}, "timestamp": 1,
        "message": {"mid": mid, "text": text}}]}]}, ensure_ascii=False)


def count(services: Services, model: type, *where: object) -> int:
    with services.sessions() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where)) or 0  # type: ignore[arg-type]


def test_group_commit_stores_every_concurrent_put(services: Services) -> None:
    inbox = Inbox(services.sessions)  # no processor: only the writer

    async def scenario() -> None:
        stop = asyncio.Event()
        runner = asyncio.create_task(inbox.run(stop))
        await asyncio.sleep(0)
        await asyncio.gather(*(inbox.put("messenger", delivery(f"u{i}", f"m{i}", "lương hưu")) for i in range(300)))
        stop.set()
        await runner

    asyncio.run(scenario())
    assert count(services, InboxDelivery) == 300
    with services.sessions() as db:
        bodies = {row.body for row in db.scalars(select(InboxDelivery))}
    assert len(bodies) == 300


def test_a_stored_delivery_is_answered_once_even_when_processed_twice(services: Services) -> None:
    body = delivery("u1", "m-dup", "nghỉ thai sản được mấy tháng")
    asyncio.run(services.inbox.put("messenger", body))
    asyncio.run(services.inbox.put("messenger", body))  # the platform's retry of the same delivery
    assert services.inbox.drain() == 1
    assert count(services, InboxDelivery) == 0
    assert count(services, Message, Message.external_id == "m-dup") == 1
    assert count(services, Message, Message.direction == "out") == 1


def test_a_claim_whose_process_died_is_taken_again_after_its_lease(services: Services) -> None:
    asyncio.run(services.inbox.put("messenger", delivery("u2", "m-crash", "rút bhxh 1 lần")))
    dead = services.inbox.claim()  # a process claims it, then dies before answering
    assert len(dead) == 1
    assert services.inbox.claim() == []  # its lease holds
    with services.sessions() as db, db.begin():
        db.execute(update(InboxDelivery).values(lease_until=utcnow() - timedelta(seconds=1)))
    assert services.inbox.drain() == 1  # another process (or this one, restarted) answers it
    assert count(services, Message, Message.external_id == "m-crash") == 1


def test_processing_failures_are_retried_then_kept_as_failed(services: Services) -> None:
    calls: list[str] = []

    def broken(channel: str, body: str) -> int:
        calls.append(channel)
        raise RuntimeError("the matcher fell over")

    inbox = Inbox(services.sessions, broken)
    asyncio.run(inbox.put("messenger", delivery("u3", "m-bad", "alo")))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        with services.sessions() as db, db.begin():
            db.execute(update(InboxDelivery).values(next_attempt_at=utcnow() - timedelta(seconds=1)))
        inbox.drain()
        assert len(calls) == attempt
    with services.sessions() as db:
        row = db.scalars(select(InboxDelivery)).one()
    assert row.status == "failed" and row.attempts == MAX_ATTEMPTS and "fell over" in (row.last_error or "")
    inbox.drain()
    assert len(calls) == MAX_ATTEMPTS  # given up: kept for an operator, not retried forever
    assert count(services, Outbox) == 0
