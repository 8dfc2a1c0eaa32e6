"""Several processes on one database: the same delivery to two server processes is answered once,
two dispatchers drain one outbox sending every row once (SKIP LOCKED on PostgreSQL), and a row a
dead worker claimed is sent once its lease expires. Replies go to a stand-in Graph API on loopback."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select, text

from app.bot import Bot
from app.db.models import Message, Outbox, Person, as_utc, utcnow
from app.db.session import make_engine, make_sessionmaker
from app.outbox import Dispatcher, RetryPolicy, Sender
from app.services import Services, build_services
from app.settings import Settings
from tests.conftest import free_port
from tests.test_channels import (  # the stand-in Graph API and signed deliveries
    APP_SECRET, PAGE_TOKEN, VERIFY, Platform, count, messenger_post, text_event, wait_for,
)
from webhooks import messenger
from webhooks.base import InboundEvent

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ("nghỉ thai sản được mấy tháng", "rút bhxh 1 lần", "trợ cấp thất nghiệp được bao nhiêu",
             "thẻ bhyt bị mất làm lại ở đâu", "đóng bhxh bao nhiêu năm thì được lương hưu")


def postgres_only(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share one database on PostgreSQL only (SQLite is single-process)")


def messenger_sender(platform: Platform, sent_by: Counter[str] | None = None, name: str = "") -> Sender:
    """The Messenger channel's real send, to the stand-in; counts which dispatcher sent."""
    async def send(client: httpx.AsyncClient, msg):  # type: ignore[no-untyped-def]
        if sent_by is not None:
            sent_by[name] += 1
        return await messenger.send(client, platform.url + "/graph", PAGE_TOKEN, msg)
    return send


def queue_replies(services: Services, n: int, prefix: str) -> list[str]:
    """n Messenger questions from n people, answered and queued (not sent); their ids."""
    psids = [f"{prefix}{i}" for i in range(n)]
    for i, psid in enumerate(psids):
        event = InboundEvent("messenger", psid, QUESTIONS[i % len(QUESTIONS)], event_id=f"m_{psid}")
        assert services.pipeline.handle(event) is not None
    return psids


# --- the same delivery to two server processes --------------------------------------------------


class ServerProcess:
    """`vssbot serve` in a process of its own, on the given database and stand-in Graph API."""

    def __init__(self, database_url: str, platform: Platform, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("VSSBOT_")}
        env.update(VSSBOT_DATABASE_URL=database_url, VSSBOT_MESSENGER_VERIFY_TOKEN=VERIFY,
                   VSSBOT_MESSENGER_APP_SECRET=APP_SECRET, VSSBOT_MESSENGER_PAGE_TOKEN=PAGE_TOKEN,
                   VSSBOT_MESSENGER_API_BASE=platform.url + "/graph", VSSBOT_DISPATCH_INTERVAL="0.05",
                   VSSBOT_LOG_LEVEL="WARNING")
        self.log = log.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                                     cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"the server process exited: see {self.log.name}"
        try:
            return httpx.get(self.url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
def two_servers(platform: Platform, database_url: str, bot: Bot, tmp_path: Path) -> Iterator[tuple[ServerProcess, ServerProcess, Services]]:
    postgres_only(database_url)
    # Migrated and seeded once here, as a deployment runs `vssbot db upgrade` before starting processes.
    services = build_services(Settings(database_url=database_url), bot=bot)
    servers = [ServerProcess(database_url, platform, tmp_path / f"server{i}.log") for i in (1, 2)]
    try:
        for server in servers:
            assert wait_for(server.ready, 90), f"server did not become ready: see {server.log.name}"
        yield servers[0], servers[1], services
    finally:
        for server in servers:
            server.stop()
        services.close()


def test_the_same_delivery_to_two_processes_at_once_is_stored_and_answered_once(
        two_servers: tuple[ServerProcess, ServerProcess, Services], platform: Platform) -> None:
    one, two, services = two_servers
    n = 12
    targets = [one.url, two.url, one.url, two.url]  # every delivery: two copies to each process
    for i in range(n):
        barrier = threading.Barrier(len(targets))
        event = text_event(f"race{i}", f"m_race{i}", QUESTIONS[i % len(QUESTIONS)])

        def deliver(url: str) -> int:
            barrier.wait()  # all copies leave together
            return messenger_post(url, [event]).status_code

        with ThreadPoolExecutor(len(targets)) as pool:
            assert list(pool.map(deliver, targets)) == [200] * len(targets)
    # Once every queued reply is sent nothing more can go out: then count.
    assert wait_for(lambda: count(services, Outbox, Outbox.status == "sent") == n, 60)
    assert count(services, Outbox) == n
    with services.sessions() as s:
        inbound = Counter(s.scalars(select(Message.external_id).where(Message.direction == "in")).all())
        assert inbound == Counter({f"m_race{i}": 1 for i in range(n)})
        assert s.scalar(select(func.count()).select_from(Message).where(Message.direction == "out")) == n
        assert s.scalar(select(func.count()).select_from(Person)) == n
    with platform.lock:
        recipients = Counter(m["recipient"]["id"] for m in platform.graph)
    assert recipients == Counter({f"race{i}": 1 for i in range(n)})


# --- two dispatchers, one outbox ----------------------------------------------------------------


def test_two_dispatchers_drain_one_outbox_sending_every_row_once(
        services: Services, database_url: str, platform: Platform) -> None:
    postgres_only(database_url)
    psids = queue_replies(services, 80, "d")
    sent_by: Counter[str] = Counter()
    stop = threading.Event()
    start = threading.Barrier(2)
    engines = [make_engine(database_url) for _ in range(2)]  # two pools, as two processes would have

    def drain(name: str, dispatcher: Dispatcher) -> None:
        async def go() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                start.wait()
                while not stop.is_set():
                    if not await dispatcher.run_once(client):
                        await asyncio.sleep(0.02)
        asyncio.run(go())

    threads = [
        threading.Thread(target=drain, args=(name, Dispatcher(
            make_sessionmaker(engine), {"messenger": messenger_sender(platform, sent_by, name)}, batch=4)))
        for name, engine in zip(("a", "b"), engines)
    ]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: count(services, Outbox, Outbox.status == "sent") == len(psids), 60)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        for engine in engines:
            engine.dispose()
    with platform.lock:
        recipients = Counter(m["recipient"]["id"] for m in platform.graph)
    assert recipients == Counter({p: 1 for p in psids})
    assert sum(sent_by.values()) == len(psids) and sent_by["a"] > 0 and sent_by["b"] > 0  # both took part
    with services.sessions() as s:
        assert set(s.scalars(select(Outbox.attempts)).all()) == {1}


def test_a_claim_skips_rows_another_dispatcher_has_locked(services: Services, database_url: str, platform: Platform) -> None:
    """On PostgreSQL a claim does not wait behind rows another transaction holds: it takes the next ones."""
    postgres_only(database_url)
    queue_replies(services, 3, "l")
    with services.sessions() as s:
        first, *rest = s.scalars(select(Outbox.id).order_by(Outbox.id)).all()
    dispatcher = Dispatcher(services.sessions, {"messenger": messenger_sender(platform)}, policy=RetryPolicy(lease=60))
    claimed: list[int] = []
    with services.engine.connect() as holder:
        holder.execute(text("SELECT id FROM outbox WHERE id = :id FOR UPDATE"), {"id": first})  # mid-claim elsewhere
        worker = threading.Thread(target=lambda: claimed.extend(r.id for r in dispatcher.claim()))
        worker.start()
        worker.join(30)
        finished_while_locked = not worker.is_alive()
        holder.rollback()
    worker.join(30)
    assert finished_while_locked, "the claim waited for another transaction's row lock"
    assert claimed == rest
    with services.sessions() as s:
        rows = {r.id: r for r in s.scalars(select(Outbox))}
    now = utcnow()
    assert rows[first].status == "pending" and rows[first].lease_until is None
    for row_id in rest:  # claimed rows carry their lease, so a dead worker's rows are retaken
        lease = rows[row_id].lease_until
        assert rows[row_id].status == "sending" and lease is not None
        assert now + timedelta(seconds=50) < as_utc(lease) <= now + timedelta(seconds=61)
    assert [r.id for r in dispatcher.claim()] == [first]


# --- crash recovery -----------------------------------------------------------------------------

DEAD_WORKER = """
import os, signal, sys
from app.db.session import make_engine, make_sessionmaker
from app.outbox import Dispatcher, RetryPolicy

async def unreachable(client, msg):
    raise AssertionError("the dead worker never sends")

dispatcher = Dispatcher(make_sessionmaker(make_engine(sys.argv[1])), {"messenger": unreachable},
                        policy=RetryPolicy(lease=float(sys.argv[2])))
print(",".join(str(row.id) for row in dispatcher.claim()), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # dies holding the claim: no record, no release
"""


def test_a_row_claimed_by_a_dead_worker_is_sent_once_its_lease_expires(services: Services, platform: Platform) -> None:
    (psid,) = queue_replies(services, 1, "crash")
    lease = 3.0
    dead = subprocess.run([sys.executable, "-c", DEAD_WORKER, services.settings.database_url, str(lease)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert dead.returncode == -signal.SIGKILL, dead.stderr
    with services.sessions() as s:
        row = s.scalar(select(Outbox))
        assert row is not None and dead.stdout.strip() == str(row.id)
        assert row.status == "sending" and row.lease_until is not None and row.attempts == 0
        lease_until = as_utc(row.lease_until)
    survivor = Dispatcher(services.sessions, {"messenger": messenger_sender(platform)})

    def run_once() -> int:
        async def go() -> int:
            async with httpx.AsyncClient(timeout=10) as client:
                return await survivor.run_once(client)
        return asyncio.run(go())

    taken = run_once()
    assert taken == 0 or utcnow() >= lease_until  # not retaken while the lease holds
    assert taken or wait_for(run_once, lease + 20)
    with services.sessions() as s:
        row = s.scalar(select(Outbox))
        assert row is not None and row.status == "sent" and row.attempts == 1 and row.lease_until is None
    assert len(platform.sent_to(psid)) == 1
    assert run_once() == 0 and len(platform.sent_to(psid)) == 1
