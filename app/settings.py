"""All configuration, from environment variables prefixed VSSBOT_ (and an optional .env file)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
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

    # Channels: a channel without its settings is disabled (its webhook answers 404).
    messenger_verify_token: str | None = None
    messenger_app_secret: str | None = None
    messenger_page_token: str | None = None
    messenger_api_base: str = "https://graph.facebook.com/v25.0"
    zalo_app_id: str | None = None
    zalo_app_secret: str | None = None
    zalo_oa_secret: str | None = None
    zalo_access_token: str | None = Field(None, description="initial value; the database holds the current one")
    zalo_refresh_token: str | None = Field(None, description="initial value; the database holds the current one")
    zalo_api_base: str = "https://openapi.zalo.me"
    zalo_oauth_base: str = "https://oauth.zaloapp.com"
    max_body_bytes: int = Field(256 * 1024, description="largest webhook body accepted")
    handover_minutes: int = Field(60 * 24, description="how long the bot stays quiet after a person takes over")
    dispatch_interval: float = Field(0.2, description="seconds between outbox polls when idle")
    serve_answers: bool = Field(
        True, description="`vssbot serve` also answers stored deliveries and sends replies; false: it only "
        "acknowledges them and `vssbot worker` processes answer (keeps acknowledgements fast under load)")

    # Abuse resistance (app/ratelimit.py): limits are per process (N processes: up to N times them)
    rate_per_minute: float = Field(20, ge=0, description="messages one sender may send a minute (0: no limit)")
    rate_burst: int = Field(10, ge=1, description="messages one sender may send at once before the rate applies")
    rate_per_address_minute: float = Field(
        120, ge=0, description="public API calls one client address may make a minute, whatever its session ids (0: no limit)")
    api_max_body_bytes: int = Field(64 * 1024, ge=1024, description="largest request body the public API accepts")

    # Staff console (/admin)
    console_session_hours: float = Field(12, description="a console login lasts this long")
    cookie_secure: bool | None = Field(
        None, description="Secure flag on the console cookie; unset: on when the request came over HTTPS")
    login_max_failures: int = Field(5, description="failed logins per username (and 4x per address) in 15 minutes")
    eval_dir: Path = Field(Path("tests/eval"), description="evaluation set the console runs before a publish")
    kb_poll_seconds: float = Field(
        5, description="how often each process looks for a newly published knowledge base (0: never)")

    # Privacy (Decree 13/2023/ND-CP): inbound text is stored masked; the original only on request,
    # encrypted (see app/privacy.py).
    store_original: bool = Field(False, description="also keep each inbound original, encrypted with data_key")
    data_key: SecretStr | None = Field(
        None, description="Fernet key(s), comma-separated (the first encrypts); `vssbot privacy keygen`")

    @model_validator(mode="after")
    def _privacy_key(self) -> "Settings":
        # fail at start-up, not at the first message: the originals could not be stored or read
        from app.privacy import TextVault

        TextVault.from_settings(self)  # raises PrivacyError, which says what to set
        return self

    @property
    def messenger_enabled(self) -> bool:
        return bool(self.messenger_verify_token and self.messenger_app_secret and self.messenger_page_token)

    @property
    def zalo_enabled(self) -> bool:
        return bool(self.zalo_app_id and self.zalo_app_secret and self.zalo_oa_secret and self.zalo_refresh_token)


@lru_cache
def get_settings() -> Settings:
    return Settings()


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for memory or another database)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.endswith(":memory:"):
        return None
    return Path(url[len(prefix):])
