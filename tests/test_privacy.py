"""Personal numbers (Decree 13/2023/ND-CP): masked in the logs, masked at rest, and the original
kept only encrypted, readable only with the key; on SQLite and PostgreSQL."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from sqlalchemy import create_engine, inspect, select

from app.db.models import Feedback, Message, ReviewItem
from app.logging import setup_logging
from app.pipeline import Pipeline
from app.privacy import PrivacyError, TextVault, mask_pii, new_key, original_text
from app.services import Services
from app.settings import Settings
from webhooks.base import InboundEvent

CITIZEN_ID = "001234567890"
PHONE = "0901234567"
QUESTION = f"CCCD của tôi là {CITIZEN_ID}, tôi muốn rút bhxh một lần"
# A 12-digit run as a citizen types it: not followed by a letter or digit. Digits glued to letters
# on their right are part of a token (the hex of a message id, e.g. "…ab886954074192cd…") and
# are left alone by design (app/privacy.py); random ids contain such runs now and then.
TWELVE_DIGITS = re.compile(r"(?<!\d)\d{12}(?!\w)")
ROOT = Path(__file__).parents[1]
VSSBOT = str(Path(sys.executable).parent / "vssbot")


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """Logging set up as `vssbot serve` does (DEBUG, JSON lines), into a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (structlog.get_config(), root.handlers[:], root.level)
    buf = io.StringIO()
    setup_logging("DEBUG", json=True, stream=buf)
    try:
        yield buf
    finally:
        config, handlers, level = saved
        structlog.configure(**config)
        root.handlers[:] = handlers
        root.setLevel(level)


# --- Logs -----------------------------------------------------------------------------------------


def test_structlog_events_are_masked_in_every_value(log_output: io.StringIO) -> None:
    log = structlog.get_logger("test")
    log.info(f"question {CITIZEN_ID}", text=QUESTION, nested={"phone": [PHONE, {"id": CITIZEN_ID}]},
             pair=("a", f"mail me at an.nguyen@example.vn or {PHONE}"), count=3)
    try:
        raise ValueError(f"could not parse {CITIZEN_ID}")
    except ValueError:
        log.exception("parse_failed")
    out = log_output.getvalue()
    assert "•••••••••890" in out and "•••••••567" in out and "a•••@example.vn" in out
    assert not TWELVE_DIGITS.search(out) and PHONE not in out and "an.nguyen" not in out
    assert "could not parse" in out and '"count": 3' in out  # the traceback is kept, numbers stay numbers


def test_stdlib_loggers_are_masked_too(log_output: io.StringIO) -> None:
    logger = logging.getLogger("uvicorn.error")  # a library logger, propagating to the root handler
    logger.warning("client sent %s", QUESTION)
    try:
        raise RuntimeError(f"bad row {PHONE}")
    except RuntimeError:
        logger.exception("failed for %s", CITIZEN_ID)
    out = log_output.getvalue()
    assert "client sent CCCD" in out and "RuntimeError: bad row •••••••567" in out
    assert not TWELVE_DIGITS.search(out) and PHONE not in out


def test_a_citizen_id_through_the_pipeline_leaves_no_trace_in_the_logs(
        services: Services, log_output: io.StringIO) -> None:
    # SQL statements with their parameters too: the most talkative a deployment's logs can get
    logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)
    try:
        for channel in ("web", "messenger"):
            handled = services.pipeline.handle(InboundEvent(channel=channel, user_id="u1", text=QUESTION,
                                                            event_id=f"m-{channel}"))
            assert handled is not None and handled.reply is not None
            services.pipeline.feedback(handled.reply_id, False, f"gọi tôi {PHONE}, cccd {CITIZEN_ID}")
    finally:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)
    out = log_output.getvalue()
    assert "answered" in out and "INSERT INTO messages" in out  # the logs did capture the traffic
    assert not TWELVE_DIGITS.search(out), TWELVE_DIGITS.search(out)
    assert PHONE not in out


# --- At rest ---------------------------------------------------------------------------------------


def test_by_default_inbound_text_is_stored_masked_and_matched_unmasked(services: Services) -> None:
    handled = services.pipeline.handle(InboundEvent(channel="web", user_id="u1", text=QUESTION))
    assert handled is not None and handled.reply is not None
    services.pipeline.feedback(handled.reply_id, False, f"số tôi {PHONE}")
    fallback = services.pipeline.handle(InboundEvent(channel="web", user_id="u1", text=f"xyz qwe {CITIZEN_ID}"))
    assert fallback is not None and fallback.reply is not None and fallback.reply.kind == "fallback"
    with services.sessions() as s:
        inbound = s.get(Message, handled.inbound_id)
        reply = s.get(Message, handled.reply_id)
        assert inbound is not None and reply is not None
        assert inbound.text == mask_pii(QUESTION) == "CCCD của tôi là •••••••••890, tôi muốn rút bhxh một lần"
        assert inbound.text_private is None
        assert original_text(inbound, services.settings) == inbound.text  # nothing else is kept
        # matched on what was written: the masked text would score differently
        assert reply.confidence == services.bot.reply(QUESTION, None).confidence
        assert reply.confidence != services.bot.reply(mask_pii(QUESTION), None).confidence
        assert reply.text == handled.reply.text  # bot replies are stored as sent
        assert s.scalar(select(Feedback.comment)) == "số tôi •••••••567"
        queued = s.scalar(select(ReviewItem).where(ReviewItem.message_id == fallback.reply_id))
        assert queued is not None and queued.text == "xyz qwe •••••••••890"
        for text in s.scalars(select(Message.text)):
            assert not TWELVE_DIGITS.search(text)


def test_with_store_original_the_original_is_kept_encrypted(services: Services) -> None:
    key = new_key()
    settings = Settings(database_url=services.settings.database_url, store_original=True, data_key=key)
    pipeline = Pipeline(services.bot, services.sessions, vault=TextVault.from_settings(settings))
    handled = pipeline.handle(InboundEvent(channel="messenger", user_id="psid-9", text=QUESTION, event_id="m_1"))
    plain = pipeline.handle(InboundEvent(channel="messenger", user_id="psid-9", text="nghỉ thai sản mấy tháng",
                                         event_id="m_2"))
    assert handled is not None and plain is not None
    with services.sessions() as s:
        inbound = s.get(Message, handled.inbound_id)
        assert inbound is not None and inbound.text == mask_pii(QUESTION)
        assert inbound.text_private and CITIZEN_ID not in inbound.text_private
        assert original_text(inbound, settings) == QUESTION
        # a key rotation: the new key first, the old one still reads what it wrote
        assert original_text(inbound, Settings(data_key=f"{new_key()},{key}")) == QUESTION
        # without the key there is no reading it back; a wrong key says so (no crash, no garbage)
        with pytest.raises(PrivacyError, match="set VSSBOT_DATA_KEY"):
            original_text(inbound, Settings())
        with pytest.raises(PrivacyError, match="not the one it was stored with"):
            original_text(inbound, Settings(data_key=new_key()))
        # nothing to hide, nothing encrypted: the stored text is the original
        kept = s.get(Message, plain.inbound_id)
        assert kept is not None and kept.text_private is None
        assert original_text(kept, Settings()) == "nghỉ thai sản mấy tháng"


def test_store_original_needs_a_valid_key() -> None:
    with pytest.raises(PrivacyError, match="VSSBOT_DATA_KEY is not set"):
        Settings(store_original=True)
    with pytest.raises(PrivacyError, match="not a Fernet key") as err:
        Settings(store_original=True, data_key="s3cret-not-a-key")
    assert "s3cret" not in str(err.value)  # the key never lands in an error (or a log)
    assert "**" in repr(Settings(data_key=new_key()).data_key)  # nor in a repr of the settings


def test_the_command_line_refuses_to_start_without_the_key(tmp_path: Path) -> None:
    env = {**os.environ, "VSSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}", "VSSBOT_STORE_ORIGINAL": "true"}
    env.pop("VSSBOT_DATA_KEY", None)
    proc = subprocess.run([VSSBOT, "db", "upgrade"], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    assert "VSSBOT_STORE_ORIGINAL is on but VSSBOT_DATA_KEY is not set" in proc.stderr
    assert "Traceback" not in proc.stderr
    key = subprocess.run([VSSBOT, "privacy", "keygen"], capture_output=True, text=True, env={**env, "VSSBOT_STORE_ORIGINAL": "false"},
                         timeout=60, cwd=ROOT).stdout.strip()
    proc = subprocess.run([VSSBOT, "db", "upgrade"], capture_output=True, text=True, env={**env, "VSSBOT_DATA_KEY": key},
                          timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_the_migration_adds_and_removes_the_private_column(services: Services) -> None:
    from alembic import command

    from app.db.session import alembic_config

    url = services.settings.database_url
    engine = create_engine(url)
    try:
        assert "text_private" in {c["name"] for c in inspect(engine).get_columns("messages")}
        command.downgrade(alembic_config(url), "0003")
        engine.dispose()
        assert "text_private" not in {c["name"] for c in inspect(engine).get_columns("messages")}
        command.upgrade(alembic_config(url), "head")
        engine.dispose()
        assert "text_private" in {c["name"] for c in inspect(engine).get_columns("messages")}
    finally:
        engine.dispose()
