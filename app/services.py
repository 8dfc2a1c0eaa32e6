"""The long-lived objects of one process (bot, database, pipeline), built from settings."""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from app.bot import Bot
from app.db.session import make_engine, make_sessionmaker, upgrade
from app.pipeline import Pipeline
from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    bot: Bot
    engine: Engine
    sessions: sessionmaker[Session]
    pipeline: Pipeline

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
    pipeline = Pipeline(bot, sessions, match_chars=settings.match_chars)
    return Services(settings, bot, engine, sessions, pipeline)
