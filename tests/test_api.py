"""The public HTTP API against a real server on loopback (and a real database)."""
from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import func, select

from app.db.models import Feedback, Message
from app.services import Services

VIETNAMESE_LETTERS = re.compile("[ăâđêôơưạảấầẩẫậắằẳẵặẹẻẽếềểễệỉịọỏốồổỗộớờởỡợụủứừửữựỳỵỷỹ]", re.IGNORECASE)
KINDS = {"faq", "clarify", "fallback", "smalltalk", "handover"}


def ask(server, **body) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(server.url + "/api/v1/ask", json=body, timeout=10)


def check_contract(data: dict) -> None:
    assert set(data) == {"kind", "intent_id", "regime", "confidence", "answer", "suggestions", "message_id"}
    assert data["kind"] in KINDS
    assert 0.0 <= data["confidence"] <= 1.0
    assert isinstance(data["answer"], str) and data["answer"]
    for s in data["suggestions"]:
        assert set(s) == {"intent_id", "question", "regime"}


def test_ask_answers_and_logs_on_the_web_channel(live_server, services: Services) -> None:  # type: ignore[no-untyped-def]
    r = ask(live_server, text="nghỉ ốm được hưởng bao nhiêu phần trăm lương", session_id="s-1")
    assert r.status_code == 200
    data = r.json()
    check_contract(data)
    assert data["kind"] == "faq" and data["regime"] == "sickness"
    assert "75%" in data["answer"]
    with services.sessions() as s:
        reply = s.get(Message, data["message_id"])
        assert reply is not None and reply.channel == "web" and reply.direction == "out"


def test_english_question_gets_an_english_answer(live_server) -> None:  # type: ignore[no-untyped-def]
    data = ask(live_server, text="How much is the unemployment benefit each month?").json()
    check_contract(data)
    assert data["kind"] == "faq" and data["regime"] == "unemployment"
    assert "60%" in data["answer"] and not VIETNAMESE_LETTERS.search(data["answer"])


def test_lang_parameter_chooses_the_reply_language(live_server) -> None:  # type: ignore[no-untyped-def]
    data = ask(live_server, text="tro cap that nghiep bao nhieu", lang="en").json()
    assert data["kind"] == "faq" and data["regime"] == "unemployment" and "60%" in data["answer"]
    assert not VIETNAMESE_LETTERS.search(data["answer"])


def test_clarify_offers_suggestions_with_regimes(live_server) -> None:  # type: ignore[no-untyped-def]
    data = ask(live_server, text="thai sản").json()
    check_contract(data)
    assert data["kind"] in {"clarify", "faq"}
    if data["kind"] == "clarify":
        assert 1 <= len(data["suggestions"]) <= 3
        assert all(s["regime"] for s in data["suggestions"])


@pytest.mark.parametrize(
    ("text", "kinds"),
    [("chào ad", {"smalltalk"}), ("anh", {"smalltalk"}), ("cho mình gặp nhân viên tư vấn", {"handover"}),
     ("giá vàng hôm nay", {"fallback"}), ("😀😀😀", {"fallback"}), ("\x00\x01\x02 \ufffd\ufffd", {"fallback"}),
     ("bảo hiểm 保险 보험 insurance", {"fallback", "clarify"}), ("a" * 3999, {"fallback", "clarify"})],
)
def test_odd_input_gets_a_sensible_reply(live_server, text: str, kinds: set[str]) -> None:  # type: ignore[no-untyped-def]
    r = ask(live_server, text=text)
    assert r.status_code == 200, r.text
    data = r.json()
    check_contract(data)
    assert data["kind"] in kinds


@pytest.mark.parametrize(
    ("body", "needle"),
    [({"text": ""}, "text must not be empty"), ({"text": "   \n "}, "text must not be empty"),
     ({"text": "x" * 10000}, "at most 4000 characters"), ({}, "Field required"),
     ({"text": "hi", "lang": "fr"}, "'vi' or 'en'"), ({"text": 5}, "valid string")],
)
def test_bad_requests_get_a_clear_422(live_server, body: dict, needle: str) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(live_server.url + "/api/v1/ask", json=body, timeout=10)
    assert r.status_code == 422
    assert needle in r.text


def test_malformed_json_is_a_422_not_a_500(live_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(live_server.url + "/api/v1/ask", content=b"{not json", headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 422


def test_feedback_on_a_reply(live_server, services: Services) -> None:  # type: ignore[no-untyped-def]
    data = ask(live_server, text="rút bhxh một lần cần điều kiện gì").json()
    r = httpx.post(live_server.url + "/api/v1/feedback", json={"message_id": data["message_id"], "helpful": False, "comment": "chưa đủ"}, timeout=10)
    assert r.status_code == 200 and r.json() == {"ok": True}
    with services.sessions() as s:
        fb = s.scalar(select(Feedback).where(Feedback.message_id == data["message_id"]))
        assert fb is not None and fb.helpful is False and fb.comment == "chưa đủ"
    missing = httpx.post(live_server.url + "/api/v1/feedback", json={"message_id": "nope", "helpful": True}, timeout=10)
    assert missing.status_code == 404
    with services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Feedback)) == 1


def test_healthz_reports_database_and_knowledge_version(live_server, services: Services) -> None:  # type: ignore[no-untyped-def]
    data = httpx.get(live_server.url + "/healthz", timeout=10).json()
    assert data["status"] == "ok" and data["database"] == "ok"
    assert data["knowledge"]["version"] == services.bot.kb.version
    assert data["knowledge"]["entries"] >= 50


def test_chat_page_is_served(live_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(live_server.url + "/", timeout=10)
    assert r.status_code == 200 and '<html lang="vi">' in r.text and "/static/chat.js" in r.text
    assert httpx.get(live_server.url + "/static/chat.js", timeout=10).status_code == 200


def test_a_chosen_option_is_answered_as_that_entry_and_recorded(live_server, services: Services) -> None:  # type: ignore[no-untyped-def]
    entry = services.bot.kb.by_id["maternity.paternity-leave"]
    r = ask(live_server, text=entry.question_vi, session_id="s-2", intent_id=entry.id)
    data = r.json()
    check_contract(data)
    assert (data["kind"], data["intent_id"], data["regime"], data["confidence"]) == ("faq", entry.id, "maternity", 1.0)
    with services.sessions() as s:
        reply = s.get(Message, data["message_id"])
        assert reply is not None and reply.candidates == [{"intent_id": entry.id, "regime": "maternity", "chosen": True}]
    bad = ask(live_server, text="x", intent_id="no.such-entry")
    assert bad.status_code == 422 and "unknown intent_id" in bad.text


def test_healthz_is_503_when_the_database_is_down(services: Services) -> None:
    from sqlalchemy import create_engine

    from tests.conftest import LiveServer, free_port

    services.engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/none", pool_pre_ping=True)
    with LiveServer(services, health_ok=False) as server:
        r = httpx.get(server.url + "/healthz", timeout=10)
        assert r.status_code == 503
        assert r.json()["status"] == "degraded" and r.json()["database"].startswith("error")


def test_asking_for_a_person_on_the_web_keeps_the_bot_answering(live_server) -> None:  # type: ignore[no-untyped-def]
    assert ask(live_server, text="cho mình gặp nhân viên tư vấn", session_id="s-3").json()["kind"] == "handover"
    data = ask(live_server, text="nghỉ thai sản được mấy tháng", session_id="s-3").json()
    check_contract(data)
    assert data["kind"] == "faq"


def test_the_text_limit_comes_from_the_settings(services: Services) -> None:
    from tests.conftest import LiveServer

    services.settings.max_text_chars = 50
    with LiveServer(services) as server:
        assert ask(server, text="x" * 51).status_code == 422
        assert "at most 50 characters" in ask(server, text="x" * 51).text
        assert ask(server, text="nghỉ thai sản được mấy tháng").status_code == 200
