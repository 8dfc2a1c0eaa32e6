"""`vssbot privacy export|erase` and `vssbot purge`, run as an operator runs them, on SQLite and
PostgreSQL: what is exported, what is deleted (and what is not), the audit rows, the errors."""
from __future__ import annotations

import getpass
import json
import os
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from app.db.models import AuditLog, Conversation, Feedback, Message, Outbox, Person, ReviewItem, utcnow
from app.pipeline import Pipeline
from app.privacy import TextVault, new_key
from app.services import Services
from webhooks.base import InboundEvent

ROOT = Path(__file__).parents[1]
VSSBOT = str(Path(sys.executable).parent / "vssbot")
CITIZEN_ID = "001234567890"
KEY = new_key()


def vssbot(services: Services, *args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("VSSBOT_")}
    environ.update(VSSBOT_DATABASE_URL=services.settings.database_url, **env)
    return subprocess.run([VSSBOT, *args], input=stdin, capture_output=True, text=True, env=environ, timeout=120, cwd=ROOT)


def count(services: Services, model: Any, *where: Any) -> int:
    with services.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


@pytest.fixture
def people(services: Services) -> dict[str, str]:
    """Three Messenger users: `target` (two conversations, a thumbs-down, a review item, the original
    of a citizen ID kept encrypted), `other` (recent), `old` (only an old conversation)."""
    pipeline = Pipeline(services.bot, services.sessions, vault=TextVault(KEY, store_original=True))
    ids: dict[str, str] = {}

    def say(user: str, text: str) -> str:
        handled = pipeline.handle(InboundEvent(channel="messenger", user_id=user, text=text,
                                               event_id=f"m_{len(ids)}_{user}_{text[:8]}"))
        assert handled is not None and handled.reply_id is not None
        ids[f"{user}:{text}"] = handled.reply_id
        return handled.reply_id

    reply = say("psid-target", f"CCCD của tôi là {CITIZEN_ID}, tôi muốn rút bhxh một lần")
    pipeline.feedback(reply, False, "chưa rõ")
    say("psid-target", "xyz qwe")  # a fallback: queued for review
    say("psid-other", "nghỉ thai sản được mấy tháng")
    say("psid-old", "trợ cấp thất nghiệp được bao nhiêu")
    with services.sessions() as s, s.begin():
        # the target's first conversation is a year old; a new one started today
        target = s.scalar(select(Person).where(Person.external_id == "psid-target"))
        assert target is not None
        conv = s.scalar(select(Conversation).where(Conversation.person_id == target.id))
        assert conv is not None
        year_ago = utcnow() - timedelta(days=365)
        s.execute(update(Conversation).where(Conversation.id == conv.id).values(last_message_at=year_ago))
        s.add(Conversation(person_id=target.id, channel="messenger"))
        old = s.scalar(select(Person).where(Person.external_id == "psid-old"))
        assert old is not None
        s.execute(update(Conversation).where(Conversation.person_id == old.id).values(last_message_at=year_ago))
        s.execute(update(Person).where(Person.id == old.id).values(last_seen=year_ago))
    return ids


def audit_rows(services: Services, action: str) -> list[AuditLog]:
    with services.sessions() as s:
        return list(s.scalars(select(AuditLog).where(AuditLog.action == action)))


# --- Export ----------------------------------------------------------------------------------------


def test_export_is_everything_about_the_person_with_originals_decrypted(
        services: Services, people: dict[str, str], tmp_path: Path) -> None:
    out = tmp_path / "export.json"
    proc = vssbot(services, "privacy", "export", "--channel", "messenger", "--user", "psid-target", "--out", str(out),
                  VSSBOT_DATA_KEY=KEY)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600  # one person's personal data: the operator's eyes only
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["person"]["channel"] == "messenger" and doc["person"]["user_id"] == "psid-target"
    assert len(doc["conversations"]) == 2
    messages = [m for c in doc["conversations"] for m in c["messages"]]
    assert [m["direction"] for m in messages] == ["in", "out", "in", "out"]
    question, answer = messages[0], messages[1]
    assert CITIZEN_ID not in question["text"] and question["original"].startswith(f"CCCD của tôi là {CITIZEN_ID}")
    assert answer["reply_to"] == question["id"] and answer["decision"]["kind"] == "faq"
    assert answer["decision"]["entry_id"] and answer["decision"]["confidence"] > 0
    assert answer["feedback"]["helpful"] is False and answer["feedback"]["comment"] == "chưa rõ"
    assert answer["delivery"]["status"] == "pending"
    assert {r["reason"] for r in doc["review_items"]} == {"dislike", "fallback"}
    assert doc["originals"] == {"stored": 1, "decrypted": 1}
    assert "psid-other" not in out.read_text(encoding="utf-8")
    [row] = audit_rows(services, "privacy.export")
    assert row.actor == f"cli:{getpass.getuser()}" and row.target == "messenger:psid-target"
    assert row.after["conversations"] == 2 and row.after["messages"] == 4


def test_export_without_the_key_leaves_originals_out_and_a_wrong_key_is_an_error(
        services: Services, people: dict[str, str]) -> None:
    proc = vssbot(services, "privacy", "export", "--channel", "messenger", "--user", "psid-target")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["conversations"][0]["messages"][0]["original"] is None
    assert doc["originals"] == {"stored": 1, "decrypted": 0}
    assert "set VSSBOT_DATA_KEY" in proc.stderr and CITIZEN_ID not in proc.stdout
    proc = vssbot(services, "privacy", "export", "--channel", "messenger", "--user", "psid-target",
                  VSSBOT_DATA_KEY=new_key())
    assert proc.returncode == 1 and proc.stdout == ""
    assert "cannot be decrypted with VSSBOT_DATA_KEY" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_people_and_bad_arguments_get_clear_errors(services: Services, people: dict[str, str]) -> None:
    for command in (("export",), ("erase", "--yes")):
        proc = vssbot(services, "privacy", *command, "--channel", "zalo", "--user", "psid-target")
        assert proc.returncode == 1
        assert "nobody with user id 'psid-target' on channel 'zalo'" in proc.stderr and "Traceback" not in proc.stderr
    proc = vssbot(services, "privacy", "export", "--channel", "fax", "--user", "x")
    assert proc.returncode == 2 and "invalid choice: 'fax'" in proc.stderr
    for days, why in (("abc", "'abc' is not a whole number of days"), ("0", "0 is out of range"),
                      ("-5", "-5 is out of range"), ("99999999", "99999999 is out of range"), ("1.5", "not a whole")):
        proc = vssbot(services, "purge", "--older-than", days, "--yes")
        assert proc.returncode == 2 and why in proc.stderr, (days, proc.stderr)
    assert count(services, Message) == 8  # nothing was touched
    assert audit_rows(services, "privacy.export") == [] and audit_rows(services, "privacy.erase") == []


# --- Erase -----------------------------------------------------------------------------------------


def test_erase_shows_what_it_deletes_asks_and_deletes_only_that_person(
        services: Services, people: dict[str, str]) -> None:
    args = ("privacy", "erase", "--channel", "messenger", "--user", "psid-target")
    proc = vssbot(services, *args, stdin="n\n")
    assert proc.returncode == 1 and "nothing deleted" in proc.stderr
    assert "people: 1, conversations: 2, messages: 4, feedback: 1, outbox: 2, review items: 2" in proc.stderr
    assert count(services, Person, Person.external_id == "psid-target") == 1

    proc = vssbot(services, *args, stdin="y\n")
    assert proc.returncode == 0, proc.stderr
    assert "people: 1, conversations: 2, messages: 4, feedback: 1, outbox: 2, review items: 2" in proc.stdout
    assert count(services, Person, Person.external_id == "psid-target") == 0
    assert count(services, Feedback) == 0 and count(services, ReviewItem) == 0
    # everyone else is untouched
    assert count(services, Person) == 2 and count(services, Conversation) == 2
    assert count(services, Message) == 4 and count(services, Outbox) == 2
    [row] = audit_rows(services, "privacy.erase")
    assert row.actor == f"cli:{getpass.getuser()}" and row.target == "messenger:psid-target"
    assert row.after == {"people": 1, "conversations": 2, "messages": 4, "feedback": 1, "outbox": 2, "review_items": 2}
    # the person can write again and is simply someone new
    again = services.pipeline.handle(InboundEvent(channel="messenger", user_id="psid-target", text="chào ad",
                                                  event_id="m_again"))
    assert again is not None and count(services, Person, Person.external_id == "psid-target") == 1


# --- Purge -----------------------------------------------------------------------------------------


def test_purge_deletes_old_conversations_batch_by_batch_and_keeps_recent_ones(
        services: Services, people: dict[str, str]) -> None:
    proc = vssbot(services, "purge", "--older-than", "30", stdin="")  # no answer: no deletion
    assert proc.returncode == 1 and "nothing deleted" in proc.stderr
    assert "people: 1, conversations: 2, messages: 6, feedback: 1, outbox: 3, review items: 2" in proc.stderr
    assert count(services, Conversation) == 4

    proc = vssbot(services, "purge", "--older-than", "30", "--yes", "--batch", "1")
    assert proc.returncode == 0, proc.stderr
    progress = [line.strip() for line in proc.stderr.splitlines() if line.startswith("  ")]
    assert progress[:2] == ["1/2 conversations, 0 people", "2/2 conversations, 0 people"]  # one batch at a time
    assert progress[-1] == "2/2 conversations, 1 people"
    with services.sessions() as s:
        # psid-old had nothing else: gone; the target keeps today's conversation (empty) and psid-other all
        assert set(s.scalars(select(Person.external_id))) == {"psid-target", "psid-other"}
        assert s.scalar(select(func.count()).select_from(Conversation)) == 2
        assert s.scalar(select(func.count()).select_from(Message)) == 2
        left = s.scalars(select(Message.text)).all()
        assert all("rút bhxh" not in t for t in left)
        assert s.scalar(select(func.count()).select_from(Feedback)) == 0
        assert s.scalar(select(func.count()).select_from(ReviewItem)) == 0
        assert s.scalar(select(func.count()).select_from(Outbox)) == 1
    [row] = audit_rows(services, "retention.purge")
    assert row.actor == f"cli:{getpass.getuser()}" and row.target == "older_than=30d"
    assert row.after["conversations"] == 2 and row.after["people"] == 1 and row.after["messages"] == 6
    assert row.after["complete"] is True

    proc = vssbot(services, "purge", "--older-than", "30", "--yes")
    assert proc.returncode == 0 and "nothing to purge" in proc.stderr
