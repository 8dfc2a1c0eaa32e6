"""The `vssbot` command as a person (or the acceptance check) runs it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
VSSBOT = str(Path(sys.executable).parent / "vssbot")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "VSSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'cli.db'}"}


def run(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([VSSBOT, *args], input=stdin, capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)


def test_help_lists_every_command(env: dict[str, str]) -> None:
    out = run(env, "--help").stdout
    for cmd in ("serve", "chat", "ask", "eval", "kb", "db"):
        assert cmd in out
    assert "--jsonl" in run(env, "ask", "--help").stdout


def test_ask_jsonl_answers_every_line_in_order_and_survives_bad_lines(env: dict[str, str]) -> None:
    lines = [
        json.dumps({"text": "nghỉ thai sản được mấy tháng"}, ensure_ascii=False),
        "{this is not json",
        json.dumps({"text": ""}),
        json.dumps({"no_text": 1}),
        json.dumps({"text": "chào ad"}, ensure_ascii=False),
        json.dumps({"text": "x" * 10000}),
        json.dumps({"text": "\u0000\u0001 🤖🤖"}),
        json.dumps({"text": "How much is the unemployment benefit?", "lang": "en"}),
        json.dumps({"text": "tôi muốn nói chuyện với nhân viên"}, ensure_ascii=False),
        json.dumps({"text": "nghỉ thai sản được mấy tháng"}, ensure_ascii=False),
    ]
    proc = run(env, "ask", "--jsonl", "-", stdin="\n".join(lines) + "\n")
    assert proc.returncode == 0, proc.stderr
    replies = [json.loads(l) for l in proc.stdout.splitlines()]
    assert len(replies) == len(lines)
    assert replies[0]["kind"] == "faq" and replies[0]["regime"] == "maternity" and replies[0]["message_id"]
    assert "error" in replies[1] and "error" in replies[3]
    assert replies[2]["kind"] == "fallback"
    assert replies[4]["kind"] == "smalltalk"
    assert replies[5]["kind"] in ("fallback", "clarify")
    assert replies[6]["kind"] == "fallback"
    assert replies[7]["kind"] == "faq" and replies[7]["regime"] == "unemployment"
    # a request for a person does not silence the CLI (nobody could answer there)
    assert replies[8]["kind"] == "handover" and replies[8]["answer"]
    assert replies[9]["kind"] == "faq" and replies[9]["regime"] == "maternity"


def test_ask_one_question_as_json(env: dict[str, str]) -> None:
    proc = run(env, "ask", "--json", "rút", "bhxh", "1", "lần")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["regime"] == "old_age" or data["kind"] == "clarify"


def test_chat_reads_questions_and_feedback_until_eof(env: dict[str, str]) -> None:
    proc = run(env, "chat", stdin="chào ad\ntrợ cấp thất nghiệp được bao nhiêu\n+\nq\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("vssbot:") == 2
    assert "60%" in proc.stdout
    assert "Cảm ơn bạn đã đánh giá" in proc.stdout


def test_db_upgrade_is_idempotent(env: dict[str, str]) -> None:
    for _ in range(2):
        proc = run(env, "db", "upgrade")
        assert proc.returncode == 0, proc.stderr


def test_eval_prints_accuracy_by_style_and_regime(env: dict[str, str], tmp_path: Path) -> None:
    cases = tmp_path / "cases.jsonl"
    cases.write_text(
        "\n".join(json.dumps(c, ensure_ascii=False) for c in [
            {"id": "c1", "text": "trợ cấp thất nghiệp được bao nhiêu", "expect": "faq", "regime": "unemployment", "facts": [["60%"]], "style": "accented"},
            {"id": "c2", "text": "chao ad", "expect": "smalltalk", "style": "no_diacritics"},
            {"id": "c3", "text": "giá vàng hôm nay", "expect": "fallback", "style": "accented"},
            {"id": "c4", "text": "giá vàng hôm nay", "expect": "faq", "regime": "general", "style": "accented"},
        ]),
        encoding="utf-8",
    )
    proc = run(env, "eval", str(cases))
    assert proc.returncode == 0, proc.stderr
    assert "by style:" in proc.stdout and "by label:" in proc.stdout and "confusion" in proc.stdout
    assert "cases=4 right=0.750" in proc.stdout
    assert "c4" in proc.stdout  # the miss is listed
    assert run(env, "eval", str(cases), "--min-score", "0.9").returncode == 1


def test_release_hands_a_conversation_back_to_the_bot(env: dict[str, str]) -> None:
    from sqlalchemy import select

    from app.db.models import Conversation
    from app.services import build_services
    from app.settings import Settings
    from webhooks.base import InboundEvent

    services = build_services(Settings(database_url=env["VSSBOT_DATABASE_URL"]))
    handled = services.pipeline.handle(InboundEvent("messenger", "p1", "cho em gặp nhân viên", event_id="m1"))
    assert handled is not None and handled.reply is not None and handled.reply.kind == "handover"
    proc = run(env, "release", str(handled.conversation_id))
    assert proc.returncode == 0, proc.stderr
    with services.sessions() as s:
        conv = s.scalar(select(Conversation))
        assert conv is not None and conv.state == "bot" and conv.paused_until is None
    assert run(env, "release", "999").returncode == 1
    services.close()
