"""Console conversations: search, transcripts, reveal, flag, takeover, the handover inbox, staff
replies through the outbox (to a stand-in Graph API and Zalo API), and the CSV export."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.bot import Bot
from app.console import conversations as module
from app.console.conversations import fold, reply_window
from app.db.models import AuditLog, Conversation, Message, Outbox, ReviewItem, as_utc, utcnow
from app.outbox import RetryPolicy
from app.pipeline import Handled
from app.privacy import new_key
from app.services import Services, build_services
from app.settings import Settings
from tests.conftest import Console, LiveServer, create_staff
from tests.test_channels import (APP_SECRET, OA_ID, OA_SECRET, PAGE_ID, PAGE_TOKEN, VERIFY, ZALO_APP, ZALO_SECRET,
                                 Platform, messenger_post, text_event, wait_for, zalo_post)
from webhooks.base import InboundEvent

CITIZEN_ID, PHONE = "012345678901", "0912345678"


def say(svc: Services, channel: str, user: str, text: str, event_id: str, **kw: Any) -> Handled:
    handled = svc.pipeline.handle(InboundEvent(channel=channel, user_id=user, text=text, event_id=event_id, **kw))
    assert handled is not None
    return handled


def shift(svc: Services, conversation_id: int, delta: timedelta) -> None:
    """Move a conversation and all its messages `delta` into the past (as if it happened then)."""
    with svc.sessions() as db:
        conv = db.get(Conversation, conversation_id)
        assert conv is not None
        conv.started_at = as_utc(conv.started_at) - delta
        conv.last_message_at = as_utc(conv.last_message_at) - delta
        for m in db.scalars(select(Message).where(Message.conversation_id == conversation_id)):
            m.created_at = as_utc(m.created_at) - delta
        for item in db.scalars(select(ReviewItem).where(ReviewItem.conversation_id == conversation_id)):
            item.created_at = as_utc(item.created_at) - delta
        db.commit()


def age_last_inbound(svc: Services, conversation_id: int, age: timedelta) -> None:
    """Make the person's last message `age` old (what the platforms' reply windows count from)."""
    with svc.sessions() as db:
        last = db.scalars(select(Message).where(Message.conversation_id == conversation_id, Message.direction == "in")
                          .order_by(Message.created_at.desc())).first()
        assert last is not None
        last.created_at = utcnow() - age
        db.commit()


@contextmanager
def console_on(settings: Settings, bot: Bot) -> Iterator[Console]:
    """The console on a live server with these settings (the `console` fixture uses the defaults)."""
    services = build_services(settings, bot=bot)
    create_staff(services)
    try:
        with LiveServer(services) as server:
            c = Console(server, services)
            try:
                yield c
            finally:
                c.close()
    finally:
        services.close()


def listed(page: httpx.Response) -> set[int]:
    assert page.status_code == 200, page.text[:500]
    return {int(i) for i in re.findall(r'href="/admin/conversations/(\d+)"', page.text)}


def audits(svc: Services, action: str) -> list[AuditLog]:
    with svc.sessions() as db:
        return list(db.scalars(select(AuditLog).where(AuditLog.action == action).order_by(AuditLog.id)))


def count(svc: Services, model: Any, *where: Any) -> int:
    with svc.sessions() as db:
        return db.scalar(select(func.count()).select_from(model).where(*where)) or 0


def conversation(svc: Services, cid: int) -> Conversation:
    with svc.sessions() as db:
        conv = db.get(Conversation, cid)
        assert conv is not None
        return conv


# --- unit: reply windows and folding -----------------------------------------------------------------


def test_reply_windows_follow_the_platform_rules() -> None:
    now = datetime(2026, 11, 24, 12, tzinfo=timezone.utc)
    ago = lambda **kw: now - timedelta(**kw)  # noqa: E731
    w = reply_window("messenger", ago(hours=3), now)
    assert (w.rule, w.open, w.tag, w.remaining) == ("standard", True, None, timedelta(hours=21))
    w = reply_window("messenger", ago(hours=30), now)
    assert (w.rule, w.open, w.tag, w.remaining) == ("human_agent", True, "HUMAN_AGENT", timedelta(days=7) - timedelta(hours=30))
    assert reply_window("messenger", ago(days=7, seconds=1), now).rule == "closed"
    assert reply_window("zalo", ago(hours=47), now).rule == "free"
    w = reply_window("zalo", ago(days=3), now)
    assert (w.rule, w.tag, w.open) == ("billable", None, True)
    assert not reply_window("zalo", ago(days=8), now).open
    assert reply_window("web", ago(minutes=1), now).rule == "no_channel"
    assert reply_window("cli", ago(minutes=1), now).rule == "no_channel"
    assert reply_window("messenger", None, now).rule == "no_message"
    # naive datetimes (SQLite) are read as UTC
    assert reply_window("messenger", ago(hours=1).replace(tzinfo=None), now).remaining == timedelta(hours=23)


def test_fold_drops_case_and_diacritics_also_in_decomposed_text() -> None:
    assert fold("Nghỉ THAI SẢN được mấy tháng? Đ") == "nghi thai san duoc may thang? d"
    assert fold("thai sa\u0309n") == "thai san"  # base letter + combining hook above
    assert len(module.FOLD_FROM) == len(module.FOLD_TO)


# --- search ------------------------------------------------------------------------------------------


@pytest.fixture
def mix(console: Console) -> dict[str, int]:
    """Five conversations on three channels with known kinds, regimes, feedback, state and dates."""
    svc = console.services
    maternity = say(svc, "web", "w1", "Nghỉ THAI SẢN được mấy tháng", "e1")
    svc.pipeline.feedback(maternity.reply_id or "", True)
    cat = say(svc, "messenger", "p1", "cho mình hỏi về con mèo nhà hàng xóm ạ", "e2")
    svc.pipeline.feedback(cat.reply_id or "", False)
    pension = say(svc, "zalo", "z1", "tuổi nghỉ hưu của nam", "e3")
    person = say(svc, "messenger", "p2", "gặp nhân viên", "e4")
    hello = say(svc, "web", "w2", "xin chào", "e5")
    shift(svc, hello.conversation_id, timedelta(days=40))
    kinds = {h.conversation_id: h.reply.kind for h in (maternity, cat, pension, person, hello) if h.reply}
    assert list(kinds.values()) == ["faq", "fallback", "faq", "handover", "smalltalk"]
    return {"maternity": maternity.conversation_id, "cat": cat.conversation_id, "pension": pension.conversation_id,
            "person": person.conversation_id, "hello": hello.conversation_id}


def test_each_search_filter_narrows_the_results(console: Console, mix: dict[str, int]) -> None:
    def found(query: str) -> set[str]:
        ids = listed(console.viewer.get("/admin/conversations" + query))
        return {name for name, cid in mix.items() if cid in ids}

    assert found("") == set(mix)
    assert found("?channel=zalo") == {"pension"}
    assert found("?channel=web") == {"maternity", "hello"}
    assert found("?kind=fallback") == {"cat"}
    assert found("?kind=handover") == {"person"}
    assert found("?kind=smalltalk") == {"hello"}
    assert found("?regime=maternity") == {"maternity"}
    assert found("?regime=old_age") == {"pension"}
    assert found("?feedback=liked") == {"maternity"}
    assert found("?feedback=disliked") == {"cat"}
    assert found("?feedback=any") == {"maternity", "cat"}
    assert found("?state=human") == {"person"}
    assert found("?state=bot") == set(mix) - {"person"}
    assert found("?q=thai+s%E1%BA%A3n") == {"maternity"}  # "thai sản": case-insensitive on Vietnamese letters
    assert found("?q=THAI+SAN") == {"maternity"}  # no diacritics typed: matches text with them
    assert found("?q=con+m%C3%A8o") == {"cat"}  # "con mèo"
    assert found("?q=c%C3%B2n+meo") == set()  # "còn meo": diacritics typed are matched as typed
    assert found("?q=100%25_") == set()  # LIKE wildcards are searched literally
    assert found("?q=xin+ch%C3%A0o") == {"hello"}
    # people's words by default; the bot's replies too when asked (every fallback says "hỏi lại cụ thể hơn")
    assert found("?q=h%E1%BB%8Fi+l%E1%BA%A1i+c%E1%BB%A5+th%E1%BB%83") == set()
    assert found("?q=h%E1%BB%8Fi+l%E1%BA%A1i+c%E1%BB%A5+th%E1%BB%83&scope=all") == {"cat"}
    days = lambda n: (datetime.now(module.VN) - timedelta(days=n)).date().isoformat()  # noqa: E731
    assert found(f"?date_to={days(30)}") == {"hello"}
    assert found(f"?date_from={days(7)}") == set(mix) - {"hello"}
    assert found(f"?date_from={days(41)}&date_to={days(39)}") == {"hello"}
    assert found("?channel=web&kind=faq") == {"maternity"}
    bad = console.viewer.get("/admin/conversations?channel=fax&date_from=yesterday")
    assert "channel=fax" in bad.text and "date_from=yesterday" in bad.text and listed(bad) == set(mix.values())


def test_search_rows_summarise_each_conversation_masked_and_paginate(console: Console, mix: dict[str, int],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    svc = console.services
    pii = say(svc, "web", "w3", f"số CCCD {CITIZEN_ID} và điện thoại {PHONE}, nghỉ thai sản mấy tháng", "e6")
    page = console.viewer.get("/admin/conversations?channel=web")
    assert CITIZEN_ID not in page.text and PHONE not in page.text
    assert "•••••••••901" in page.text and "•••••••678" in page.text
    row = next(tr for tr in page.text.split("<tr>") if f'/admin/conversations/{pii.conversation_id}"' in tr)
    cells = re.findall(r"<td>(.*?)</td>", row, re.S)
    assert cells[3] == "2" and "bot" in cells[7]  # two messages; the bot answers
    liked = next(tr for tr in page.text.split("<tr>") if f'/admin/conversations/{mix["maternity"]}"' in tr)
    assert "👍 1" in liked and ">faq<" in liked
    monkeypatch.setattr(module, "PAGE_SIZE", 2)  # the live server runs in this process
    first, second = console.viewer.get("/admin/conversations"), console.viewer.get("/admin/conversations?page=1")
    third = console.viewer.get("/admin/conversations?page=2")
    assert len(listed(first)) == len(listed(second)) == 2 and len(listed(third)) == 2
    assert listed(first) | listed(second) | listed(third) == set(mix.values()) | {pii.conversation_id}
    assert "page=1" in first.text and "page=3" not in third.text  # an "older" link only while there is more
    newest = re.findall(r'href="/admin/conversations/(\d+)"', first.text)
    assert int(newest[0]) == pii.conversation_id  # newest first


# --- the transcript ----------------------------------------------------------------------------------


def test_transcript_shows_the_decisions_oldest_first_and_masks_personal_numbers(console: Console) -> None:
    svc = console.services
    first = say(svc, "messenger", "p9", f"CCCD của tôi là {CITIZEN_ID}, sđt {PHONE}, thai sản mấy tháng", "t1")
    second = say(svc, "messenger", "p9", "nghỉ thai sản được mấy tháng", "t2")
    chosen = say(svc, "messenger", "p9", "Thời gian nghỉ thai sản", "t3", kind="choice",
                 payload="maternity.leave-duration")
    assert first.conversation_id == second.conversation_id == chosen.conversation_id
    svc.pipeline.feedback(second.reply_id or "", False)
    page = console.viewer.get(f"/admin/conversations/{first.conversation_id}")
    assert page.status_code == 200
    text = page.text
    assert CITIZEN_ID not in text and PHONE not in text and "•••••••••901" in text and "•••••••678" in text
    with svc.sessions() as db:
        reply = db.get(Message, second.reply_id)
        assert reply is not None and reply.confidence is not None and reply.candidates
        assert 'href="/admin/kb/entries/maternity.leave-duration"' in text
        assert f"{reply.confidence:.2f}" in text and reply.regime == "maternity"
        runner_up = reply.candidates[1]
        assert f"{runner_up['intent_id']} ({runner_up['score']:.2f})" in text
        assert (reply.kb_version or "")[:12] in text
    assert "maternity.leave-duration (đã chọn)" in text  # the picked option is shown as chosen
    assert "👎" in text and 'class="transcript"' in text and '<tr class="in"' in text and '<tr class="out"' in text
    assert text.index("CCCD của tôi") < text.index("nghỉ thai sản được mấy tháng")  # oldest first
    assert "Hiện số cá nhân" not in text and "/flag" not in text and "/take-over" not in text  # a viewer reads only
    assert console.viewer.get("/admin/conversations/999999").status_code == 404
    english = console.viewer.get(f"/admin/conversations/{first.conversation_id}?lang=en")
    assert "Confidence" in english.text and "Candidates" in english.text


@pytest.fixture
def keeping(database_url: str, bot: Bot) -> Iterator[Console]:
    """The console where the operator keeps originals, encrypted (VSSBOT_STORE_ORIGINAL + VSSBOT_DATA_KEY)."""
    settings = Settings(database_url=database_url, store_original=True, data_key=new_key())
    with console_on(settings, bot) as c:
        yield c


def test_reveal_is_an_audited_admin_only_post_that_is_never_cached(keeping: Console) -> None:
    console, svc = keeping, keeping.services
    h = say(svc, "web", "w9", f"mã số BHXH của tôi {CITIZEN_ID}, sđt {PHONE}", "r1")
    with svc.sessions() as db:
        stored = db.get(Message, h.inbound_id)
        assert stored is not None and CITIZEN_ID not in stored.text and stored.text_private  # masked at rest
    path = f"/admin/conversations/{h.conversation_id}/reveal"
    page = console.admin.get(f"/admin/conversations/{h.conversation_id}")
    assert CITIZEN_ID not in page.text and f'action="{path}"' in page.text
    assert console.admin.get(path).status_code == 405  # never a GET: nothing to bookmark or prefetch
    assert console.editor.post(path).status_code == 403
    assert console.viewer.post(path).status_code == 403
    assert console.admin.post(path, csrf=False).status_code == 403
    assert console.anon.post(path).status_code == 401
    assert audits(svc, "pii.reveal") == []
    shown = console.admin.post(path)
    assert shown.status_code == 200 and CITIZEN_ID in shown.text and PHONE in shown.text
    assert shown.headers["cache-control"] == "no-store"
    (record,) = audits(svc, "pii.reveal")
    assert record.actor == "admin" and record.target == f"conversation:{h.conversation_id}" and record.ip
    assert record.after["revealed"] == [h.inbound_id]
    assert CITIZEN_ID not in console.admin.get(f"/admin/conversations/{h.conversation_id}").text  # masked again


def test_reveal_without_stored_originals_says_there_is_nothing_to_show(console: Console) -> None:
    h = say(console.services, "web", "w9", f"mã số BHXH của tôi {CITIZEN_ID}", "r1")
    page = console.admin.get(f"/admin/conversations/{h.conversation_id}")
    assert "/reveal" not in page.text and "không lưu bản gốc" in page.text
    shown = console.admin.post(f"/admin/conversations/{h.conversation_id}/reveal")
    assert shown.status_code == 200 and "Không có bản gốc" in shown.text and "•••••••••901" in shown.text
    (record,) = audits(console.services, "pii.reveal")
    assert record.after["revealed"] == []


# --- flag, take over, release -------------------------------------------------------------------------


def test_flag_puts_a_bot_reply_in_the_review_queue(console: Console) -> None:
    svc = console.services
    answered = say(svc, "web", "w4", "nghỉ thai sản được mấy tháng", "f1")
    unclear = say(svc, "web", "w4", "cho mình hỏi về con mèo nhà hàng xóm ạ", "f2")
    path = f"/admin/messages/{answered.reply_id}/flag"
    assert console.viewer.post(path).status_code == 403
    assert console.editor.post(path, csrf=False).status_code == 403
    assert console.anon.post(path).status_code == 401
    r = console.editor.post(path)
    assert r.status_code == 303 and r.headers["location"].startswith(f"/admin/conversations/{answered.conversation_id}")
    with svc.sessions() as db:
        item = db.scalar(select(ReviewItem).where(ReviewItem.message_id == answered.reply_id))
        assert item is not None and (item.reason, item.status) == ("flagged", "open")
        assert item.question_id == answered.inbound_id and item.text == "nghỉ thai sản được mấy tháng"
        # the fallback's item, resolved by someone, is reopened as flagged
        fallback = db.scalar(select(ReviewItem).where(ReviewItem.message_id == unclear.reply_id))
        assert fallback is not None and fallback.reason == "fallback"
        fallback.status, fallback.action, fallback.resolved_by = "resolved", "dismissed", "editor"
        db.commit()
    assert console.editor.post(f"/admin/messages/{unclear.reply_id}/flag").status_code == 303
    with svc.sessions() as db:
        items = db.scalars(select(ReviewItem).where(ReviewItem.message_id == unclear.reply_id)).all()
        assert [(i.reason, i.status, i.action, i.resolved_by) for i in items] == [("flagged", "open", None, None)]
    flags = audits(svc, "review.flag")
    assert [(a.actor, a.target) for a in flags] == [("editor", f"message:{answered.reply_id}"),
                                                    ("editor", f"message:{unclear.reply_id}")]
    assert flags[0].before is None and flags[1].before["reason"] == "fallback"
    page = console.editor.get(r.headers["location"])
    assert "flagged · open" in page.text and "Đã đánh dấu" in page.text
    assert console.editor.post(f"/admin/messages/{answered.inbound_id}/flag").status_code == 404  # not a reply
    assert console.editor.post("/admin/messages/nope/flag").status_code == 404


def test_take_over_silences_the_bot_and_release_brings_it_back(console: Console) -> None:
    svc = console.services
    h = say(svc, "messenger", "p3", "nghỉ thai sản được mấy tháng", "k1")
    cid = h.conversation_id
    take, free = f"/admin/conversations/{cid}/take-over", f"/admin/conversations/{cid}/release"
    for client in (console.viewer,):
        assert client.post(take).status_code == 403 and client.post(free).status_code == 403
    assert console.editor.post(take, csrf=False).status_code == 403
    assert console.anon.post(take).status_code == 401
    assert conversation(svc, cid).state == "bot"
    r = console.editor.post(take)
    assert r.status_code == 303 and r.headers["location"] == f"/admin/conversations/{cid}?done=take_over"
    conv = conversation(svc, cid)
    expected = utcnow() + timedelta(minutes=svc.settings.handover_minutes)
    assert conv.state == "human" and conv.paused_until is not None
    assert abs((as_utc(conv.paused_until) - expected).total_seconds()) < 60
    assert say(svc, "messenger", "p3", "tuổi nghỉ hưu của nam", "k2").reply is None  # stored, not answered
    page = console.editor.get(r.headers["location"])
    assert "Đã tiếp nhận" in page.text and "Trả lại cho bot" in page.text
    assert listed(console.viewer.get("/admin/conversations?state=human")) == {cid}
    assert console.editor.post(free).status_code == 303
    assert conversation(svc, cid).state == "bot"
    assert say(svc, "messenger", "p3", "tuổi nghỉ hưu của nam", "k3").reply is not None
    (took,) = audits(svc, "conversation.take_over")
    (released,) = audits(svc, "conversation.release")
    assert took.before["state"] == "bot" and took.after["state"] == "human" and took.actor == "editor"
    assert released.before["state"] == "human" and released.after["state"] == "bot"
    assert console.editor.post("/admin/conversations/424242/take-over").status_code == 404


# --- the handover inbox ------------------------------------------------------------------------------


def test_the_handover_inbox_lists_who_waits_oldest_first_with_the_reply_window(console: Console) -> None:
    svc = console.services
    web = say(svc, "web", "w5", "gặp nhân viên", "h1")  # the web page does not pause; its request waits
    shift(svc, web.conversation_id, timedelta(hours=2))
    fb = say(svc, "messenger", "p4", "gặp nhân viên", "h2")
    assert fb.reply is not None and fb.reply.kind == "handover"
    assert conversation(svc, fb.conversation_id).state == "human"  # the pipeline paused it
    zalo = say(svc, "zalo", "z4", "gặp nhân viên", "h3")
    shift(svc, zalo.conversation_id, timedelta(days=3))
    say(svc, "web", "w6", "nghỉ thai sản được mấy tháng", "h4")  # nobody waits here
    page = console.viewer.get("/admin/handover")
    assert page.status_code == 200
    order = [int(i) for i in re.findall(r'href="/admin/conversations/(\d+)#reply"', page.text)]
    assert order == [zalo.conversation_id, web.conversation_id, fb.conversation_id]  # oldest request first
    rows = {cid: next(tr for tr in page.text.split("<tr>") if f'/admin/conversations/{cid}#reply"' in tr)
            for cid in order}
    assert "Trong khung 24 giờ của Messenger: còn 23 h 59 min" in rows[fb.conversation_id]
    assert "gặp nhân viên" in rows[fb.conversation_id]
    assert "tính phí" in rows[zalo.conversation_id] and "còn 3 d 23 h" in rows[zalo.conversation_id]
    assert "Trang chat web không nhận được tin trả lời" in rows[web.conversation_id]
    assert "1900 9068" in rows[web.conversation_id]
    assert "/release" not in page.text  # viewers see, editors act
    english = console.viewer.get("/admin/handover?lang=en")
    assert "24-hour window: 23 h 59 min left" in english.text
    # expired: more than 7 days since the person's last message
    age_last_inbound(svc, fb.conversation_id, timedelta(days=8))
    assert "Đã hết hạn" in console.editor.get("/admin/handover").text
    # released from the inbox: off the list, its handover request dealt with
    r = console.editor.post(f"/admin/conversations/{web.conversation_id}/release", {"back": "handover"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/handover"
    left = [int(i) for i in re.findall(r'href="/admin/conversations/(\d+)#reply"', console.editor.get("/admin/handover").text)]
    assert left == [zalo.conversation_id, fb.conversation_id]
    with svc.sessions() as db:
        item = db.scalar(select(ReviewItem).where(ReviewItem.conversation_id == web.conversation_id))
        assert item is not None and (item.status, item.action, item.resolved_by) == ("resolved", "dismissed", "editor")


# --- staff replies -----------------------------------------------------------------------------------


def test_a_staff_reply_on_messenger_is_queued_with_the_right_window(console: Console) -> None:
    svc = console.services
    h = say(svc, "messenger", "p5", "gặp nhân viên", "s1")
    cid, path = h.conversation_id, f"/admin/conversations/{h.conversation_id}/reply"
    paused_before = as_utc(conversation(svc, cid).paused_until)  # type: ignore[arg-type]
    assert console.viewer.post(path, {"text": "Dạ"}).status_code == 403
    assert console.editor.post(path, {"text": "Dạ"}, csrf=False).status_code == 403
    assert console.anon.post(path, {"text": "Dạ"}).status_code == 401
    assert console.editor.post(path, {"text": "   "}).status_code == 422
    too_long = console.editor.post(path, {"text": "x" * 2001})
    assert too_long.status_code == 422 and "2000" in too_long.text
    time.sleep(0.05)
    r = console.editor.post(path, {"text": "Dạ, em là cán bộ BHXH, em xin hỗ trợ anh ạ."})
    assert r.status_code == 303 and "done=reply" in r.headers["location"]
    with svc.sessions() as db:
        staff_msg = db.scalar(select(Message).where(Message.kind == "staff"))
        assert staff_msg is not None
        assert (staff_msg.direction, staff_msg.author, staff_msg.reply_to_id) == ("out", "editor", h.inbound_id)
        row = db.scalar(select(Outbox).where(Outbox.message_id == staff_msg.id))
        assert row is not None and (row.channel, row.recipient, row.status) == ("messenger", "p5", "pending")
        assert row.payload == {"text": "Dạ, em là cán bộ BHXH, em xin hỗ trợ anh ạ.", "options": [], "lang": "vi"}
    conv = conversation(svc, cid)
    assert conv.state == "human" and as_utc(conv.paused_until) > paused_before  # type: ignore[arg-type]
    page = console.viewer.get(f"/admin/conversations/{cid}")
    assert "Dạ, em là cán bộ BHXH" in page.text and "<strong>editor</strong>" in page.text
    # 30 hours after the person's last message: only with the HUMAN_AGENT tag
    age_last_inbound(svc, cid, timedelta(hours=30))
    assert "HUMAN_AGENT" in console.editor.get(f"/admin/conversations/{cid}").text
    assert console.editor.post(path, {"text": "Anh còn cần hỗ trợ không ạ?"}).status_code == 303
    with svc.sessions() as db:
        tagged = db.scalars(select(Outbox).order_by(Outbox.id.desc())).first()
        assert tagged is not None and tagged.payload["tag"] == "HUMAN_AGENT"
    # 8 days: refused, nothing stored
    age_last_inbound(svc, cid, timedelta(days=8))
    late = console.editor.post(path, {"text": "Muộn rồi"})
    assert late.status_code == 409 and "Không gửi được" in late.text and "7 ngày" in late.text
    assert "Muộn rồi" in late.text  # the text typed is kept in the form
    with svc.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Outbox).where(Outbox.payload.is_not(None))) == 3
        assert db.scalar(select(func.count()).select_from(Message).where(Message.kind == "staff")) == 2
    replies = audits(svc, "conversation.reply")
    assert [(a.actor, a.after["rule"], a.after["tag"]) for a in replies] == [
        ("editor", "standard", None), ("editor", "human_agent", "HUMAN_AGENT")]


def test_no_staff_reply_to_the_web_page(console: Console) -> None:
    svc = console.services
    h = say(svc, "web", "w7", "gặp nhân viên", "s9")
    r = console.editor.post(f"/admin/conversations/{h.conversation_id}/reply", {"text": "Dạ"})
    assert r.status_code == 409 and "Trang chat web không nhận được" in r.text
    with svc.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Message).where(Message.kind == "staff")) == 0
        assert db.scalar(select(func.count()).select_from(Outbox)) == 0


@pytest.fixture
def channels(database_url: str, bot: Bot) -> Iterator[tuple[Console, Platform]]:
    """The console on a server whose Messenger and Zalo sends go to a stand-in platform on loopback."""
    platform = Platform()
    settings = Settings(
        database_url=database_url, messenger_verify_token=VERIFY, messenger_app_secret=APP_SECRET,
        messenger_page_token=PAGE_TOKEN, messenger_api_base=platform.url + "/graph",
        zalo_app_id=ZALO_APP, zalo_app_secret=ZALO_SECRET, zalo_oa_secret=OA_SECRET,
        zalo_access_token=platform.zalo_token, zalo_refresh_token="refresh-1",
        zalo_api_base=platform.url + "/zalo", zalo_oauth_base=platform.url + "/oauth", dispatch_interval=0.05,
    )
    try:
        with console_on(settings, bot) as c:
            assert c.services.dispatcher is not None
            c.services.dispatcher.policy = RetryPolicy(base_delay=0.05, max_attempts=4)
            yield c, platform
    finally:
        platform.server.shutdown()


def test_the_dispatcher_delivers_staff_replies_with_the_human_agent_tag(channels: tuple[Console, Platform]) -> None:
    console, platform = channels
    svc = console.services
    assert messenger_post(console.url, [text_event("u8", "m_80", "gặp nhân viên")]).status_code == 200
    handover = wait_for(lambda: platform.sent_to("u8"))[0]
    assert handover["messaging_type"] == "RESPONSE"
    with svc.sessions() as db:
        cid = db.scalar(select(Conversation.id).where(Conversation.channel == "messenger"))
    assert cid is not None and conversation(svc, cid).state == "human"
    path = f"/admin/conversations/{cid}/reply"
    assert console.editor.post(path, {"text": "Dạ, cán bộ BHXH xin nghe ạ."}).status_code == 303
    plain = wait_for(lambda: platform.sent_to("u8")[1:])[0]
    assert plain["messaging_type"] == "RESPONSE" and "tag" not in plain
    assert plain["message"]["text"] == "Dạ, cán bộ BHXH xin nghe ạ."
    age_last_inbound(svc, cid, timedelta(hours=30))
    assert console.editor.post(path, {"text": "Anh còn cần hỗ trợ không ạ?"}).status_code == 303
    tagged = wait_for(lambda: platform.sent_to("u8")[2:])[0]
    assert tagged["messaging_type"] == "MESSAGE_TAG" and tagged["tag"] == "HUMAN_AGENT"
    assert wait_for(lambda: count(svc, Outbox, Outbox.status == "sent") == 3)
    # Meta echoes the staff reply with the bot's metadata: the adapter drops it, the pause is untouched
    paused = conversation(svc, cid).paused_until
    echo = {"sender": {"id": PAGE_ID}, "recipient": {"id": "u8"}, "timestamp": 5,
            "message": {"is_echo": True, "mid": "m_sent_3", "text": "Anh còn cần hỗ trợ không ạ?", "metadata": "vssbot"}}
    assert messenger_post(console.url, [echo]).status_code == 200
    time.sleep(0.3)
    assert conversation(svc, cid).paused_until == paused
    # the person writes while a person holds the conversation: stored, the bot keeps quiet
    messenger_post(console.url, [text_event("u8", "m_81", "dạ em cảm ơn")])
    time.sleep(0.5)
    assert len(platform.sent_to("u8")) == 3


def test_a_zalo_staff_reply_and_its_echo_do_not_re_pause_a_released_conversation(
        channels: tuple[Console, Platform]) -> None:
    console, platform = channels
    svc = console.services
    zalo_post(console.url, "zu1", "zm1", "gặp nhân viên")
    assert wait_for(lambda: len(platform.zalo) == 1, 15)
    with svc.sessions() as db:
        cid = db.scalar(select(Conversation.id).where(Conversation.channel == "zalo"))
    assert cid is not None and conversation(svc, cid).state == "human"
    assert console.editor.post(f"/admin/conversations/{cid}/reply", {"text": "Dạ, em hỗ trợ anh ạ"}).status_code == 303
    assert wait_for(lambda: len(platform.zalo) == 2, 15)
    assert platform.zalo[1] == {"recipient": {"user_id": "zu1"}, "message": {"text": "Dạ, em hỗ trợ anh ạ"}}
    with svc.sessions() as db:
        staff_msg = db.scalar(select(Message.id).where(Message.kind == "staff"))
        sent_id = wait_for(lambda: db.scalar(select(Outbox.platform_message_id).where(Outbox.message_id == staff_msg)))
    assert console.editor.post(f"/admin/conversations/{cid}/release").status_code == 303
    ts = "1732500000009"
    obj = {"app_id": ZALO_APP, "event_name": "oa_send_text", "timestamp": ts, "sender": {"id": OA_ID},
           "recipient": {"id": "zu1"}, "message": {"msg_id": sent_id, "text": "Dạ, em hỗ trợ anh ạ"}}
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    mac = hashlib.sha256(ZALO_APP.encode() + raw + ts.encode() + OA_SECRET.encode()).hexdigest()
    assert httpx.post(console.url + "/webhooks/zalo", content=raw, headers={"X-ZEvent-Signature": "mac=" + mac}).status_code == 200
    time.sleep(0.3)
    assert conversation(svc, cid).state == "bot"  # the echo of our own send is not a takeover
    zalo_post(console.url, "zu1", "zm2", "tuổi nghỉ hưu của nam")
    assert wait_for(lambda: len(platform.zalo) == 3, 15)  # and the bot answers again


# --- CSV export, roles -------------------------------------------------------------------------------


def test_csv_export_is_masked_filtered_excel_ready_and_audited(console: Console, mix: dict[str, int]) -> None:
    svc = console.services
    pii = say(svc, "web", "w8", f"CCCD {CITIZEN_ID}, gọi {PHONE} giúp em", "x1")
    r = console.viewer.get("/admin/conversations.csv?channel=web")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.content.startswith("\ufeff".encode())  # BOM: Excel reads UTF-8
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert rows[0] == ["Mã hội thoại", "Kênh", "Thời gian (UTC+7)", "Chiều", "Loại", "Mục", "Độ tin cậy", "Phản hồi",
                       "Nội dung"]
    body = rows[1:]
    assert {int(row[0]) for row in body} == {mix["maternity"], mix["hello"], pii.conversation_id}
    assert all(row[1] == "web" for row in body)
    assert CITIZEN_ID not in r.text and PHONE not in r.text
    assert any("•••••••••901" in row[8] and "•••••••678" in row[8] for row in body)
    answer = next(row for row in body if row[5] == "maternity.leave-duration")
    assert answer[3] == "out" and answer[4] == "faq" and answer[7] == "liked" and re.fullmatch(r"\d\.\d\d", answer[6])
    assert len(body) == 6  # three conversations of two messages
    recent = console.viewer.get("/admin/conversations.csv?channel=web&date_from="
                                + (datetime.now(module.VN) - timedelta(days=7)).date().isoformat())
    assert mix["hello"] not in {int(row[0]) for row in list(csv.reader(io.StringIO(recent.content.decode("utf-8-sig"))))[1:]}
    exports = audits(svc, "export.conversations")
    assert [(a.actor, a.after["filters"], a.after["rows"]) for a in exports][0] == ("viewer", {"channel": "web"}, 6)
    english = console.viewer.get("/admin/conversations.csv?lang=en")
    assert english.content.decode("utf-8-sig").startswith("conversation_id,channel,")
    assert console.anon.get("/admin/conversations.csv").status_code == 303


def test_anonymous_requests_are_sent_to_login_and_viewers_cannot_act(console: Console) -> None:
    svc = console.services
    h = say(svc, "messenger", "p7", "nghỉ thai sản được mấy tháng", "a1")
    cid = h.conversation_id
    for path in ("/admin/conversations", f"/admin/conversations/{cid}", "/admin/handover",
                 "/admin/conversations?channel=web"):
        r = console.anon.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next="), path
    actions = [f"/admin/conversations/{cid}/take-over", f"/admin/conversations/{cid}/release",
               f"/admin/conversations/{cid}/reply", f"/admin/conversations/{cid}/reveal",
               f"/admin/messages/{h.reply_id}/flag"]
    audited = count(svc, AuditLog)
    for path in actions:
        assert console.anon.post(path, {"text": "x"}).status_code == 401, path
        assert console.viewer.post(path, {"text": "x"}).status_code == 403, path
        assert console.editor.post(path, {"text": "x"}, csrf=False).status_code == 403, path
        assert console.admin.post(path, {"text": "x", "csrf_token": "forged"}, csrf=False).status_code == 403, path
    with svc.sessions() as db:
        assert db.scalar(select(func.count()).select_from(AuditLog)) == audited  # nothing changed
        assert db.scalar(select(func.count()).select_from(ReviewItem)) == 0
    assert conversation(svc, cid).state == "bot"
    for client in (console.viewer, console.editor, console.admin):
        assert client.get(f"/admin/conversations/{cid}").status_code == 200
        assert client.get("/admin/handover").status_code == 200
