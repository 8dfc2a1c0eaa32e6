"""The acknowledgement path under load: deliveries answered before the middleware stack (with their
own request id, metrics and clean errors), serving processes that only acknowledge, answering that
waits for a burst to pass, and a dispatcher that sends different people's replies at the same time."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import time

import httpx
import pytest
from prometheus_client import REGISTRY
from sqlalchemy import delete, select
from sqlalchemy.exc import OperationalError

from app.bot import Bot
from app.db.models import InboxDelivery, Message, Outbox
from app.inbox import Inbox
from app.outbox import Dispatcher, RetryPolicy
from app.services import Services
from tests.conftest import LiveServer
from tests.test_channels import server  # noqa: F401 - the live server with both channels (a fixture)
from tests.test_channels import APP_SECRET, Platform, count, messenger_post, serving_channels, text_event
from tests.test_inbox import delivery
from tests.test_observability import scrape, value
from webhooks import messenger, zalo
from webhooks.base import MalformedBody, OutboundMessage, SendResult


def counted(status: str) -> float:
    labels = {"method": "POST", "route": "/webhooks/messenger", "status": status}
    return REGISTRY.get_sample_value("vssbot_http_requests_total", labels) or 0.0


def test_a_delivery_has_a_request_id_and_is_counted_like_any_request(server: tuple[LiveServer, Services]) -> None:
    live, _ = server
    ok_before, refused_before = counted("200"), counted("403")
    ok = messenger_post(live.url, [text_event("p-rid", "m-rid-1", "lương hưu tính thế nào")])
    assert ok.status_code == 200 and ok.json() == {"status": "EVENT_RECEIVED"}
    assert len(ok.headers["X-Request-ID"]) == 32
    refused = httpx.post(live.url + "/webhooks/messenger", content=b"{}", headers={"X-Request-ID": "proxy-1"})
    assert refused.status_code == 403 and "detail" in refused.json()
    assert refused.headers["X-Request-ID"] == "proxy-1"  # a proxy's id is kept, as on every route
    assert counted("200") == ok_before + 1 and counted("403") == refused_before + 1


def test_malformed_json_is_a_400_and_an_unknown_shape_is_acknowledged(server: tuple[LiveServer, Services]) -> None:
    for raw in (b"not json", b"\xff\xfe{", b"[" * 100_000):
        with pytest.raises(MalformedBody):
            messenger.parse(raw)
        with pytest.raises(MalformedBody):
            zalo.parse(raw)
    live, services = server
    for raw, status in ((b'{"object": "page", "entry": [', 400), (b"[1, 2]", 200)):
        sig = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
        r = httpx.post(live.url + "/webhooks/messenger", content=raw, headers={"X-Hub-Signature-256": sig})
        assert r.status_code == status, raw
    assert count(services, InboxDelivery) == 0 and count(services, Message) == 0


def test_a_failing_store_answers_503_or_500_and_says_nothing_of_why(
        server: tuple[LiveServer, Services], monkeypatch: pytest.MonkeyPatch) -> None:
    live, services = server

    async def database_away(channel: str, body: str) -> None:
        raise OperationalError("INSERT INTO inbox", {}, Exception("connection refused to db-secret-host"))

    monkeypatch.setattr(services.inbox, "put", database_away)
    away = messenger_post(live.url, [text_event("p-err", "m-err-1", "bhxh 1 lần")])
    assert away.status_code == 503 and away.headers["Retry-After"] == "5"  # the platform retries it later
    assert away.json() == {"detail": "service temporarily unavailable", "request_id": away.headers["X-Request-ID"]}

    async def broken(channel: str, body: str) -> None:
        raise RuntimeError("internal detail: /srv/vssbot/secret.py line 12")

    monkeypatch.setattr(services.inbox, "put", broken)
    failed = messenger_post(live.url, [text_event("p-err", "m-err-2", "bhxh 1 lần")])
    assert failed.status_code == 500 and "secret" not in failed.text
    assert failed.json() == {"detail": "internal error", "request_id": failed.headers["X-Request-ID"]}
    assert count(services, InboxDelivery) == 0


def test_a_serving_process_can_leave_answering_to_workers(platform: Platform, database_url: str, bot: Bot) -> None:
    with serving_channels(platform, database_url, bot, RetryPolicy(base_delay=0.05), serve_answers=False) as served:
        live, services = served
        assert messenger_post(live.url, [text_event("p-ack", "m-ack-1", "nghỉ thai sản mấy tháng")]).status_code == 200
        time.sleep(1.0)  # five of the processor's poll intervals: a serving process that answered would have
        assert count(services, InboxDelivery) == 1 and count(services, Outbox) == 0
        assert platform.sent_to("p-ack") == []
        waiting = scrape(live.url)  # what an operator sees: one delivery acknowledged, not answered
        assert value(waiting, "vssbot_inbox_rows", status="pending") == 1
        assert value(waiting, "vssbot_inbox_oldest_pending_age_seconds") >= 1.0
        assert services.inbox.drain() == 1  # what `vssbot worker` does
        answered = scrape(live.url)
        assert value(answered, "vssbot_inbox_rows", status="pending") == 0
        assert value(answered, "vssbot_inbox_oldest_pending_age_seconds") == 0
    assert count(services, InboxDelivery) == 0 and count(services, Outbox) == 1


def test_answering_waits_while_a_burst_of_deliveries_is_being_acknowledged(services: Services) -> None:
    answered_at: list[float] = []

    def process(channel: str, body: str) -> int:
        answered_at.append(time.monotonic())
        return 1

    async def burst(inbox: Inbox, seconds: float) -> float:
        """Deliveries every 20 ms for `seconds`; the time of the last one."""
        stop = asyncio.Event()
        runner = asyncio.create_task(inbox.run(stop))
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            await inbox.put("messenger", delivery(f"u{i}", f"burst-{id(inbox)}-{i}", "alo"))
            i += 1
            await asyncio.sleep(0.02)
        last = time.monotonic()
        deadline = time.monotonic() + 10
        while len(answered_at) < i and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        stop.set()
        await runner
        assert len(answered_at) == i
        return last

    # quiet 0.5 s: far longer than the gap between two deliveries, even on a slow machine
    last = asyncio.run(burst(Inbox(services.sessions, process, ack_quiet=0.5, ack_max_defer=60), 1.0))
    assert min(answered_at) >= last  # nothing answered until the burst was over
    answered_at.clear()
    # ... but never deferred for longer than ack_max_defer: under sustained load it keeps answering
    last = asyncio.run(burst(Inbox(services.sessions, process, ack_quiet=0.5, ack_max_defer=0.3), 2.0))
    assert min(answered_at) < last - 0.5


def test_under_sustained_load_a_waiting_commit_goes_before_the_next_answer(services: Services) -> None:
    """Past the deferral, answering goes on, but each answer's transaction waits for the group
    commit of deliveries already waiting (on SQLite both need the one write lock), a bounded wait."""
    events: list[tuple[str, float]] = []
    for commit_wait, first_four in ((10.0, ["answer", "commit starts", "commit ends", "answer"]),
                                    (0.05, ["answer", "commit starts", "answer", "answer"])):  # not for long
        events = answer_during_a_slow_commit(services, commit_wait)
        kinds = [kind for kind, _ in events]
        assert kinds[:4] == first_four, kinds
        assert kinds.count("answer") == 4  # the three stored deliveries and the late one


def answer_during_a_slow_commit(services: Services, commit_wait: float) -> list[tuple[str, float]]:
    events: list[tuple[str, float]] = []
    inbox = Inbox(services.sessions, ack_quiet=0.0, ack_max_defer=0.0, commit_wait=commit_wait)
    insert = inbox._insert

    def slow_insert(rows: list[tuple[str, str]]) -> None:
        events.append(("commit starts", time.monotonic()))
        time.sleep(0.3)
        insert(rows)
        events.append(("commit ends", time.monotonic()))

    def process(channel: str, body: str) -> int:
        events.append(("answer", time.monotonic()))
        if len(events) == 1:  # while answering the first stored delivery, another one arrives
            asyncio.run_coroutine_threadsafe(inbox.put("messenger", delivery("late", "late-1", "alo")), loop)
            time.sleep(0.05)  # ... and its commit starts before this answer ends
        return 1

    inbox.process = process
    insert([("messenger", delivery(f"u{i}", f"stored-{i}", "alo")) for i in range(3)])

    async def scenario() -> None:
        nonlocal loop
        loop = asyncio.get_running_loop()
        inbox._insert = slow_insert  # type: ignore[method-assign]
        stop = asyncio.Event()
        runner = asyncio.create_task(inbox.run(stop))
        deadline = time.monotonic() + 10
        while sum(kind == "answer" for kind, _ in events) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        stop.set()
        await runner

    loop: asyncio.AbstractEventLoop | None = None
    asyncio.run(scenario())
    with services.sessions() as db:  # the next round starts from an empty inbox
        db.execute(delete(InboxDelivery))
        db.commit()
    return events


def test_replies_to_different_people_go_out_together_and_each_persons_in_order(services: Services) -> None:
    for i, (psid, text) in enumerate([("anna", "lương hưu"), ("anna", "thai sản"), ("binh", "bhyt"), ("binh", "rút 1 lần")]):
        services.inbox.process("messenger", delivery(psid, f"m-order-{i}", text))
    sends: list[tuple[str, str, float, float]] = []  # recipient, text, start, end

    async def slow_sender(client: httpx.AsyncClient, msg: OutboundMessage) -> SendResult:
        start = time.monotonic()
        await asyncio.sleep(0.2)
        sends.append((msg.user_id, msg.text, start, time.monotonic()))
        return SendResult(ok=True, platform_message_id=f"x{len(sends)}")

    dispatcher = Dispatcher(services.sessions, {"messenger": slow_sender})

    async def once() -> int:
        async with httpx.AsyncClient() as client:
            return await dispatcher.run_once(client)

    assert asyncio.run(once()) == 4
    with services.sessions() as db:
        rows = db.scalars(select(Outbox).order_by(Outbox.id)).all()
    assert {row.status for row in rows} == {"sent"} and all(row.attempts == 1 for row in rows)
    for person in ("anna", "binh"):  # sent in the order they were stored
        assert [text for psid, text, _, _ in sends if psid == person] == [
            row.payload["text"] for row in rows if row.recipient == person]
    by_person: dict[str, list[tuple[float, float]]] = {}
    for psid, _, start, end in sends:
        by_person.setdefault(psid, []).append((start, end))
    for person in ("anna", "binh"):
        (_, first_end), (second_start, _) = by_person[person]
        assert second_start >= first_end  # one person's replies in order, one after the other
    assert by_person["binh"][0][0] < by_person["anna"][0][1]  # different people's at the same time
