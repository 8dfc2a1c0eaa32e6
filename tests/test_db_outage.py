"""The database goes away and comes back (PostgreSQL behind a TCP relay the test can cut):
requests fail with 503 while it is away, nothing acknowledged is lost, and the service recovers
by itself, without a restart."""
from __future__ import annotations

import socket
import threading
import urllib.parse
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import func, select

from app.db.models import Message
from app.services import build_services
from app.settings import Settings
from tests.conftest import PG_URL, LiveServer, free_port

pytestmark = pytest.mark.skipif(PG_URL is None, reason="needs VSSBOT_TEST_POSTGRES_URL")


class Relay:
    """A TCP relay to PostgreSQL; `cut()` drops every connection and refuses new ones."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.port = free_port()
        self.up = threading.Event()
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", self.port))
        self.server.settimeout(0.2)
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()
        self.up.set()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self.up.is_set():
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.up.clear()
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
                except OSError:
                    pass
            self.conns.clear()

    def restore(self) -> None:
        self.up.set()

    def close(self) -> None:
        self.stopped = True
        self.cut()
        self.server.close()


@pytest.fixture
def relayed_url(database_url: str) -> Iterator[tuple[str, Relay]]:
    if not database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only")
    parts = urllib.parse.urlsplit(database_url)
    relay = Relay((parts.hostname or "127.0.0.1", parts.port or 5432))
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port or 5432}", f"127.0.0.1:{relay.port}")
    try:
        yield urllib.parse.urlunsplit(parts._replace(netloc=netloc)), relay
    finally:
        relay.close()


def test_requests_fail_with_503_while_the_database_is_away_and_recover_after(
    relayed_url: tuple[str, Relay], bot  # type: ignore[no-untyped-def]
) -> None:
    url, relay = relayed_url
    svc = build_services(Settings(database_url=url, kb_poll_seconds=0), bot=bot)
    try:
        with LiveServer(svc) as server:
            ask = {"text": "nghỉ thai sản được mấy tháng", "session_id": "outage-1"}
            assert httpx.post(server.url + "/api/v1/ask", json=ask, timeout=30).status_code == 200

            relay.cut()
            r = httpx.post(server.url + "/api/v1/ask", json=ask, timeout=30)
            assert r.status_code == 503, r.text
            assert r.headers.get("retry-after") and "Traceback" not in r.text and "psycopg" not in r.text
            assert httpx.get(server.url + "/readyz", timeout=30).status_code == 503

            relay.restore()  # no restart: the pool's pre-ping replaces the dead connections
            r = httpx.post(server.url + "/api/v1/ask", json=ask, timeout=30)
            assert r.status_code == 200, r.text
            assert httpx.get(server.url + "/readyz", timeout=30).status_code == 200
        with svc.sessions() as db:  # both acknowledged questions (and their replies) are stored
            assert db.scalar(select(func.count()).select_from(Message).where(Message.direction == "in")) == 2
            assert db.scalar(select(func.count()).select_from(Message).where(Message.direction == "out")) == 2
    finally:
        svc.close()
