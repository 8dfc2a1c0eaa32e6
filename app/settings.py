"""All configuration, from environment variables prefixed VSSBOT_ (and an optional .env file)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from knowledge.loader import CONTENT_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VSSBOT_", env_file=".env", extra="ignore")

    database_url: str = Field("sqlite:///var/vssbot.db", description="SQLAlchemy URL; SQLite file under var/ by default")
    knowledge_dir: Path = Field(CONTENT_DIR, description="folder of the knowledge-base YAML files")
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "INFO"
    log_json: bool = Field(False, description="JSON log lines (for production) instead of console lines")
    max_text_chars: int = Field(4000, description="longest message the ask API accepts")
    match_chars: int = Field(600, description="a longer message is matched on its first this many characters")
    default_lang: str = "vi"


@lru_cache
def get_settings() -> Settings:
    return Settings()


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for memory or another database)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.endswith(":memory:"):
        return None
    return Path(url[len(prefix):])
