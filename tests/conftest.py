"""Shared fixtures: databases (SQLite always, PostgreSQL when VSSBOT_TEST_POSTGRES_URL is set),
the bot on the bundled knowledge base, and a real uvicorn server on loopback."""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import create_engine, text

from app.bot import Bot
from app.services import Services, build_services
from app.settings import Settings

PG_URL = os.environ.get("VSSBOT_TEST_POSTGRES_URL")
DATABASES = ["sqlite"] + (["postgresql"] if PG_URL else [])


@pytest.fixture(scope="session")
def bot() -> Bot:
    """The bot on the configured (by default the bundled) knowledge base, built once for the run."""
    return Bot(Settings().knowledge_dir)


@pytest.fixture(params=DATABASES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'vssbot.db'}"
        return
    assert PG_URL is not None
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    try:
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def services(database_url: str, bot: Bot) -> Iterator[Services]:
    """Migrated database + the shared bot + the pipeline."""
    settings = Settings(database_url=database_url)
    svc = build_services(settings, bot=bot)
    try:
        yield svc
    finally:
        svc.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A real uvicorn server on loopback in a background thread."""

    def __init__(self, services: Services, health_ok: bool = True):
        from app.main import create_app

        self.health_ok = health_ok
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(services.settings, services=services)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None, access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                status = httpx.get(self.url + "/healthz", timeout=2).status_code
                if status == 200 or not self.health_ok:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("test server did not start")

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture
def live_server(services: Services) -> Iterator[LiveServer]:
    with LiveServer(services) as server:
        yield server


# --- The staff console -------------------------------------------------------------------------

STAFF_PASSWORD = "correct horse battery"
STAFF = {"admin": "admin", "editor": "editor", "viewer": "viewer"}  # username -> role


def create_staff(services: Services) -> None:
    """One account per role (username = role), all with STAFF_PASSWORD."""
    from app.console.accounts import create_user

    with services.sessions() as db:
        for username, role in STAFF.items():
            create_user(db, username, role, STAFF_PASSWORD, "test")
        db.commit()


class ConsoleClient:
    """An httpx client logged in to the console as one role, sending its CSRF token on changes."""

    def __init__(self, base_url: str, username: str | None = None):
        # 120 s: the knowledge-base check (build, leave-one-out over every phrasing, the evaluation
        # set) takes ~25 s on a quiet machine, more on a busy CI runner
        self.http = httpx.Client(base_url=base_url, follow_redirects=False, timeout=120)
        self.csrf = ""
        if username:
            self.login(username)

    def login(self, username: str, password: str = STAFF_PASSWORD) -> httpx.Response:
        r = self.http.post("/admin/login", data={"username": username, "password": password, "next": "/admin"})
        if r.status_code == 303:
            self.refresh_csrf()
        return r

    def refresh_csrf(self) -> None:
        import re

        page = self.http.get("/admin/account")
        match = re.search(r'<meta name="csrf-token" content="([^"]*)"', page.text)
        self.csrf = match.group(1) if match else ""

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.http.get(path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, data: dict[str, object] | None = None, csrf: bool = True, **kw: object) -> httpx.Response:
        """A form post (with the CSRF field unless `csrf` is False)."""
        form = dict(data or {})
        if csrf:
            form["csrf_token"] = self.csrf
        return self.http.post(path, data=form, **kw)  # type: ignore[arg-type]

    def post_json(self, path: str, body: object, csrf: bool = True) -> httpx.Response:
        headers = {"X-CSRF-Token": self.csrf} if csrf else {}
        return self.http.post(path, json=body, headers=headers)

    def close(self) -> None:
        self.http.close()


class Console:
    """A live server with one account per role, and a client logged in as each."""

    def __init__(self, server: LiveServer, services: Services):
        self.url, self.services = server.url, services
        self.admin = ConsoleClient(server.url, "admin")
        self.editor = ConsoleClient(server.url, "editor")
        self.viewer = ConsoleClient(server.url, "viewer")
        self.anon = ConsoleClient(server.url)

    def close(self) -> None:
        for c in (self.admin, self.editor, self.viewer, self.anon):
            c.close()


@pytest.fixture
def console(services: Services) -> Iterator[Console]:
    """The console on a live server over a fresh database (SQLite, and PostgreSQL when set)."""
    create_staff(services)
    with LiveServer(services) as server:
        c = Console(server, services)
        try:
            yield c
        finally:
            c.close()


# --- The browser (Debian's Chromium, driven by Playwright) ----------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]

def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: the browser tests must run, not be skipped)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the whole module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium); the tests never download a browser")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


# --- Stand-in Messenger and Zalo APIs --------------------------------------------------------------


@pytest.fixture
def platform() -> Iterator[Any]:
    """The stand-in Graph API and Zalo API on loopback (tests/test_channels.py: Platform)."""
    from tests.test_channels import Platform

    p = Platform()
    yield p
    p.server.shutdown()


def settle(services: Services, timeout: float = 20.0) -> None:
    """Wait until the webhook inbox is empty: every stored delivery has been answered (the live
    server's processor works in the background, as in production)."""
    from sqlalchemy import func, select

    from app.db.models import InboxDelivery

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with services.sessions() as db:
            if not db.scalar(select(func.count()).select_from(InboxDelivery).where(InboxDelivery.status == "pending")):
                return
        time.sleep(0.05)
    raise AssertionError("the inbox did not empty in time")
