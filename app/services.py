"""The long-lived objects of one process (bot, database, pipeline), built from settings."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import httpx
import structlog
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.bot import Bot
from app.db.session import make_engine, make_sessionmaker, upgrade
from app.outbox import Dispatcher, Sender
from app.pipeline import Pipeline
from app.settings import Settings
from app.tokens import ZaloTokens
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

    def close(self) -> None:
        self.engine.dispose()


def build_services(settings: Settings, migrate: bool = True, bot: Bot | None = None) -> Services:
    """Load the knowledge base (unless a bot is given), connect the database (migrating it
    first, unless told not to)."""
    bot = bot or Bot(settings.knowledge_dir)
    if migrate:
        upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    pipeline = Pipeline(bot, sessions, match_chars=settings.match_chars, handover=timedelta(minutes=settings.handover_minutes))
    services = Services(settings, bot, engine, sessions, pipeline)
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
