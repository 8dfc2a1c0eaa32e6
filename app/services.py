"""The long-lived objects of one process (bot, database, pipeline), built from settings."""
from __future__ import annotations

import functools
import gc
import threading
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app import ingest, kbstore
from app.bot import Bot
from app.db.models import KbVersion
from app.db.session import make_engine, make_sessionmaker, upgrade
from app.inbox import Inbox
from app.outbox import Dispatcher, Sender
from app.pipeline import Pipeline
from app.privacy import TextVault
from app.ratelimit import RateLimits
from app.settings import Settings
from app.tokens import ZaloTokens
from knowledge.loader import KnowledgeBase, KnowledgeError
from webhooks import messenger
from webhooks.base import OutboundMessage, SendResult


log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    bot: Bot
    engine: Engine
    sessions: sessionmaker[Session]
    pipeline: Pipeline
    dispatcher: Dispatcher | None = None
    zalo_tokens: ZaloTokens | None = None
    kb_version_id: int | None = None  # the published version (kb_versions.id) the bot serves
    inbox: Inbox = field(init=False)  # webhook deliveries stored before their 200, answered from there
    limits: RateLimits = field(init=False)  # per-sender rate limits of this process
    _kb_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def close(self) -> None:
        self.engine.dispose()

    def adopt_kb(self, version_id: int, kb: KnowledgeBase) -> bool:
        """Serve version `version_id` (loaded as `kb`) from now on; never go back to an older one
        (a slow publish must not undo a newer version the poll already loaded)."""
        with self._kb_lock:
            if self.kb_version_id is not None and version_id <= self.kb_version_id:
                return False
            if kb.version != self.bot.kb.version:
                self.bot.reload(kb)
                if gc.isenabled() and gc.get_freeze_count():
                    gc.unfreeze()  # let the old index be collected, then freeze the new one
                    freeze_heap()
            self.kb_version_id = version_id
        log.info("kb.live", id=version_id, version=kb.version)
        return True

    def sync_kb(self) -> bool:
        """Load the latest published version if it is not the one served (another process, the
        command line or a restore published it). True when the bot changed version."""
        with self.sessions() as db:
            latest_id = kbstore.latest_id(db)
            if latest_id is None or latest_id == self.kb_version_id:
                return False
            row = db.get(KbVersion, latest_id)
            assert row is not None
            if row.version == self.bot.kb.version:  # same content: nothing to rebuild
                with self._kb_lock:
                    self.kb_version_id = max(latest_id, self.kb_version_id or 0)
                return False
            try:
                kb = kbstore.version_kb(row)
            except KnowledgeError as exc:
                log.error("kb.version_invalid", id=latest_id, problems=[str(p) for p in exc.problems[:20]])
                with self._kb_lock:
                    self.kb_version_id = max(latest_id, self.kb_version_id or 0)  # do not retry it every poll
                return False
        return self.adopt_kb(latest_id, kb)


def freeze_heap() -> None:
    """Take what is alive now (the knowledge base and its index: ~140,000 objects) out of the
    garbage collector's sight. Otherwise every full collection walks them all (~70 ms at today's
    size), a pause every request in flight waits for: it showed as the webhook's ack p99."""
    gc.collect()
    gc.freeze()


def build_services(settings: Settings, migrate: bool = True, bot: Bot | None = None) -> Services:
    """Connect the database (migrating it first, unless told not to) and serve its live
    knowledge-base version (the first start publishes the files of `settings.knowledge_dir` as
    version 1). A given `bot` is kept as it is (tests): the database is only seeded."""
    if migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    with sessions() as db:
        live, loaded = kbstore.startup_version(db, settings.knowledge_dir, follow_files=bot is None,
                                               known=bot.kb if bot is not None else None)
        live_id = live.id
        if bot is None:
            bot = Bot(settings.knowledge_dir, kb=loaded or _live_kb(live, settings))
    pipeline = Pipeline(bot, sessions, match_chars=settings.match_chars, handover=timedelta(minutes=settings.handover_minutes),
                        vault=TextVault.from_settings(settings))
    services = Services(settings, bot, engine, sessions, pipeline, kb_version_id=live_id)
    services.limits = RateLimits.from_settings(settings)
    services.inbox = Inbox(sessions, functools.partial(ingest.process, pipeline, services.limits),
                           interval=settings.dispatch_interval)
    senders: dict[str, Sender] = {}
    if settings.messenger_enabled:
        base, token = settings.messenger_api_base, settings.messenger_page_token or ""

        async def send_messenger(client: httpx.AsyncClient, msg: OutboundMessage) -> SendResult:
            return await messenger.send(client, base, token, msg)

        senders["messenger"] = send_messenger
    if settings.zalo_enabled:
        services.zalo_tokens = ZaloTokens(sessions, settings)
        if migrate:
            services.zalo_tokens.seed()
        senders["zalo"] = services.zalo_tokens.send
    for channel, on in (("messenger", settings.messenger_enabled), ("zalo", settings.zalo_enabled)):
        log.info("channel", channel=channel, enabled=on)
    services.dispatcher = Dispatcher(sessions, senders, interval=settings.dispatch_interval)
    return services


def _live_kb(live: KbVersion, settings: Settings) -> KnowledgeBase:
    """The live version, loaded; if it no longer validates (a newer code's stricter rules), the
    files, so the service still starts and staff can publish a fixed version."""
    try:
        return kbstore.version_kb(live)
    except KnowledgeError as exc:
        log.error("kb.live_version_invalid", id=live.id, problems=[str(p) for p in exc.problems[:20]],
                  fallback=str(settings.knowledge_dir))
        return kbstore.folder_files(settings.knowledge_dir)[1]
