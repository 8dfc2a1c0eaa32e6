"""Console knowledge base, through HTTP on a live server: browse and search, edit as drafts,
check, publish (the bot answers the new content without a restart; a second process follows
by its poll), versions, diff and restore, and who may do what."""
from __future__ import annotations

import html
import json
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app import kbstore
from app.bot import Bot
from app.db.models import AuditLog, KbDraft, KbVersion
from app.services import Services, build_services
from app.settings import Settings
from knowledge.loader import CONTENT_DIR
from tests.conftest import Console, LiveServer, create_staff

NEW_PHRASING = "con rồng bay qua cầu vồng tím"
ENTRY = "maternity.leave-duration"
EVAL_CASES = [
    {"id": "k1", "text": "nghỉ thai sản được mấy tháng", "expect": "faq", "regime": "maternity", "style": "short"},
    {"id": "k2", "text": "How much is the unemployment benefit?", "lang": "en", "expect": "faq", "regime": "unemployment",
     "style": "en"},
    {"id": "k3", "text": "chào ad", "expect": "smalltalk", "style": "chat"},
    {"id": "k4", "text": NEW_PHRASING, "expect": "faq", "regime": "maternity", "style": "odd"},
]


@dataclass
class KbSetup:
    console: Console
    services: Services
    settings: Settings
    content: Path


@pytest.fixture
def kb(database_url: str, tmp_path: Path) -> Iterator[KbSetup]:
    """A console on its own bot (a copy of the bundled knowledge base) and a 4-case evaluation set."""
    content = tmp_path / "content"
    shutil.copytree(CONTENT_DIR, content)
    eval_dir = tmp_path / "eval"
    eval_dir.mkdir()
    (eval_dir / "cases.jsonl").write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in EVAL_CASES) + "\n",
                                          encoding="utf-8")
    settings = Settings(database_url=database_url, knowledge_dir=content, eval_dir=eval_dir, kb_poll_seconds=0.2)
    svc = build_services(settings, bot=Bot(content))
    create_staff(svc)
    try:
        with LiveServer(svc) as server:
            c = Console(server, svc)
            try:
                yield KbSetup(c, svc, settings, content)
            finally:
                c.close()
    finally:
        svc.close()


def ask(url: str, text: str) -> dict[str, Any]:
    r = httpx.post(url + "/api/v1/ask", json={"text": text}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def until_answered(url: str, text: str, answered: bool, what: str, timeout: float = 60) -> None:
    """Ask until `text` is (or is no longer) answered with ENTRY: the other process rebuilds its
    matcher at its next poll (a few seconds, more on a busy machine). Once a second, as a user
    would: the API's rate limit answers 429 to faster polling."""
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(url + "/api/v1/ask", json={"text": text}, timeout=30)
        if r.status_code == 200 and (r.json()["intent_id"] == ENTRY) == answered:
            return
        assert r.status_code in (200, 429), r.text
        assert time.monotonic() < deadline, what
        time.sleep(float(r.headers.get("retry-after", 1)) if r.status_code == 429 else 1.0)


def entry_form(data: dict[str, Any]) -> dict[str, str]:
    """An entry as the edit form posts it."""
    return {
        "kind": data["kind"], "regime": data["regime"] or "", "questions_vi": "\n".join(data["questions_vi"]),
        "questions_en": "\n".join(data["questions_en"]), "keywords": "\n".join(data["keywords"]),
        "answer_vi": data["answer_vi"], "answer_en": data["answer_en"] or "", "legal_basis": data["legal_basis"] or "",
        "checked": data["checked"] or "", "related": "\n".join(data["related"]),
    }


def live_entry(svc: Services, entry_id: str) -> dict[str, Any]:
    return kbstore.entry_dict(svc.bot.kb.by_id[entry_id])


def hidden(page: str, name: str) -> str:
    match = re.search(rf'name="{name}"[^>]* value="([^"]*)"', page)
    assert match, f"no hidden field {name}"
    return html.unescape(match.group(1))


def count(svc: Services, model: type) -> int:
    with svc.sessions() as db:
        return db.scalar(select(func.count()).select_from(model)) or 0


def actions(svc: Services, prefix: str = "kb.") -> list[tuple[str, str, Any, Any]]:
    """What staff did (the start-up's own "system" publish of version 1 left out)."""
    with svc.sessions() as db:
        rows = db.scalars(select(AuditLog).where(AuditLog.action.startswith(prefix), AuditLog.actor != "system")
                          .order_by(AuditLog.id)).all()
        return [(r.action, r.actor, r.before, r.after) for r in rows]


def check_and_publish(c: Console, note: str) -> httpx.Response:
    page = c.editor.post("/admin/kb/check")
    assert page.status_code == 200, page.text
    return c.editor.post("/admin/kb/publish", {"note": note, "checked": hidden(page.text, "checked"),
                                               "report": hidden(page.text, "report")})


# --- The whole loop --------------------------------------------------------------------------------


def test_edit_check_publish_answers_without_restart_a_second_process_follows_and_restore(kb: KbSetup) -> None:
    c, svc = kb.console, kb.services
    # a second process on the same database, started before the publish
    other = build_services(kb.settings, bot=Bot(kb.content))
    try:
        with LiveServer(other) as other_server:
            assert ask(c.url, NEW_PHRASING)["kind"] != "faq"
            data = live_entry(svc, ENTRY)
            form = entry_form(data)
            form["questions_vi"] += "\n" + NEW_PHRASING
            r = c.editor.post(f"/admin/kb/entries/{ENTRY}", form)
            assert r.status_code == 303 and r.headers["location"] == f"/admin/kb/entries/{ENTRY}?saved=1"
            page = c.editor.get(r.headers["location"])
            assert "Đã lưu bản nháp" in page.text and NEW_PHRASING in page.text
            assert ask(c.url, NEW_PHRASING)["kind"] != "faq"  # a draft changes nothing yet
            drafts_page = c.viewer.get("/admin/kb/drafts")
            assert f"+      - {NEW_PHRASING}" in html.unescape(drafts_page.text)

            checked = c.editor.post("/admin/kb/check")
            assert checked.status_code == 200
            text = html.unescape(checked.text)
            assert "4 câu hỏi" in text and "Trả lời đúng" in text  # the evaluation set, live vs draft
            assert "Tìm đúng mục" in text  # the self-test
            report = json.loads(hidden(checked.text, "report"))
            assert report["eval_live"]["cases"] == 4 and report["eval_draft"]["cases"] == 4
            # the new phrasing is one of the four cases: the draft answers it, the live one does not
            assert report["eval_draft"]["right"] == pytest.approx(report["eval_live"]["right"] + 0.25)
            assert report["changed"] == {"entries": [ENTRY], "parameters": []}
            before_version = svc.bot.kb.version

            r = c.editor.post("/admin/kb/publish", {"note": "a dragon phrasing", "checked": report["draft_version"],
                                                    "report": hidden(checked.text, "report")})
            assert r.status_code == 303 and r.headers["location"] == "/admin/kb/versions/2?published=1"
            reply = ask(c.url, NEW_PHRASING)  # this process: at once
            assert reply["kind"] == "faq" and reply["intent_id"] == ENTRY
            with svc.sessions() as db:
                v2 = db.get(KbVersion, 2)
                assert v2 is not None and v2.source == "console" and v2.created_by == "editor" and v2.note == "a dragon phrasing"
                assert v2.version == svc.bot.kb.version != before_version
                assert v2.report["eval_draft"]["cases"] == 4
                assert db.scalar(select(func.count()).select_from(KbDraft)) == 0
            publish = [a for a in actions(svc) if a[0] == "kb.publish" and a[1] == "editor"]
            assert publish == [("kb.publish", "editor", {"version": before_version},
                                {"version": svc.bot.kb.version, "id": 2, "note": "a dragon phrasing",
                                 "entries": [ENTRY], "parameters": []})]

            until_answered(other_server.url, NEW_PHRASING, True, "the second process never picked up the new version")
            assert other.kb_version_id == 2

            versions = c.viewer.get("/admin/kb/versions")
            assert "a dragon phrasing" in versions.text and "#2" in versions.text
            diff = html.unescape(c.viewer.get("/admin/kb/versions/2").text)
            assert f"+      - {NEW_PHRASING}" in diff and "maternity.yaml" in diff
            assert "Khôi phục" not in diff  # a viewer gets no restore button

            r = c.editor.post("/admin/kb/versions/1/restore", {"note": ""})
            assert r.status_code == 303 and r.headers["location"] == "/admin/kb/versions/3?restored=1"
            assert ask(c.url, NEW_PHRASING)["intent_id"] != ENTRY
            with svc.sessions() as db:
                v3 = db.get(KbVersion, 3)
                assert v3 is not None and v3.source == "restore" and v3.note == "restore of #1"
                assert v3.version == before_version
            restore = [a for a in actions(svc) if a[0] == "kb.restore"]
            assert restore[0][1] == "editor" and restore[0][3]["restored_from"] == 1 and restore[0][3]["entries"] == [ENTRY]
            # restoring what is live already is refused
            assert c.editor.post("/admin/kb/versions/1/restore").status_code == 409
            until_answered(other_server.url, NEW_PHRASING, False, "the second process never picked up the restore")
    finally:
        other.close()


# --- Browsing --------------------------------------------------------------------------------------


def test_browse_and_search_folded_by_id_regime_and_kind(kb: KbSetup) -> None:
    c = kb.console
    page = c.viewer.get("/admin/kb", params={"q": "thai san"})
    assert page.status_code == 200 and "maternity.leave-duration" in page.text and "sickness.amount" not in page.text
    assert "maternity.leave-duration" in c.viewer.get("/admin/kb", params={"q": "THAI SẢN nghỉ"}).text
    assert "maternity.leave-duration" in c.viewer.get("/admin/kb", params={"q": "leave-duration"}).text
    by_regime = c.viewer.get("/admin/kb", params={"regime": "unemployment"}).text
    assert "unemployment." in by_regime and "maternity.leave-duration" not in by_regime
    by_kind = c.viewer.get("/admin/kb", params={"kind": "smalltalk"}).text
    assert "smalltalk." in by_kind and "maternity." not in by_kind
    assert "Không có mục nào khớp" in c.viewer.get("/admin/kb", params={"q": "zzzqqq"}).text
    assert "Knowledge base" in c.viewer.get("/admin/kb?lang=en").text


def test_the_entry_page_reads_for_viewers_edits_for_editors_and_404s_unknown_ids(kb: KbSetup) -> None:
    c = kb.console
    view = c.viewer.get(f"/admin/kb/entries/{ENTRY}")
    assert view.status_code == 200 and "Lưu bản nháp" not in view.text and "maternity.yaml" in view.text
    assert "Bot sẽ trả lời" in view.text  # the rendered answer, amounts filled in
    edit = c.editor.get(f"/admin/kb/entries/{ENTRY}")
    assert "Lưu bản nháp" in edit.text and 'name="questions_vi"' in edit.text
    assert c.viewer.get("/admin/kb/entries/no.such-entry").status_code == 404
    assert c.editor.post("/admin/kb/entries/no.such-entry", entry_form(live_entry(kb.services, ENTRY))).status_code == 404
    anon = c.anon.get(f"/admin/kb/entries/{ENTRY}")
    assert anon.status_code == 303 and anon.headers["location"].startswith("/admin/login")


# --- Drafts ----------------------------------------------------------------------------------------------


def test_new_entry_from_a_question_is_prefilled_and_saved_as_a_draft(kb: KbSetup) -> None:
    c, svc = kb.console, kb.services
    page = c.editor.get("/admin/kb/new", params={"question": "nghỉ thai sản khi sinh ba được mấy tháng", "lang": "vi"})
    assert page.status_code == 200
    suggested = hidden(page.text, "id")
    assert suggested.startswith("maternity.nghi-thai-san")  # regime from the closest entry
    assert "nghỉ thai sản khi sinh ba được mấy tháng</textarea>" in page.text
    form = {"id": "maternity.triplets", "kind": "faq", "regime": "maternity",
            "questions_vi": "Sinh ba được nghỉ thai sản mấy tháng?\nsinh ba nghi may thang",
            "questions_en": "How long is maternity leave for triplets?", "keywords": "sinh ba, ba con",
            "answer_vi": "Sinh ba: nghỉ 6 tháng, thêm 1 tháng cho mỗi con thứ hai trở đi.", "answer_en": "",
            "legal_basis": "Luật BHXH 41/2024/QH15, Điều 53", "checked": "2026-11-24", "related": ENTRY}
    r = c.editor.post("/admin/kb/new", form)
    assert r.status_code == 303 and r.headers["location"] == "/admin/kb/entries/maternity.triplets?saved=1"
    with svc.sessions() as db:
        draft = db.scalar(select(KbDraft).where(KbDraft.key == "maternity.triplets"))
        assert draft is not None and draft.data["keywords"] == ["sinh ba", "ba con"] and draft.data["related"] == [ENTRY]
        assert draft.data["answer_en"] is None and draft.updated_by == "editor"
    listing = c.viewer.get("/admin/kb", params={"status": "new"}).text
    assert "maternity.triplets" in listing and "mới (nháp)" in listing
    # the same id again is refused, and what was typed is kept
    again = c.editor.post("/admin/kb/new", {**form, "answer_vi": "Một câu trả lời khác."})
    assert again.status_code == 422 and "maternity.triplets" in again.text and "Một câu trả lời khác." in again.text
    # a faq entry without a regime: refused, nothing lost
    bad = c.editor.post("/admin/kb/new", {**form, "id": "maternity.quads", "regime": ""})
    assert bad.status_code == 422 and "cần một chế độ" in bad.text and "Sinh ba được nghỉ thai sản mấy tháng?" in bad.text
    assert [a[0] for a in actions(svc)] == ["kb.draft.save"]
    # deleting a never-published entry drops its draft
    assert c.editor.post("/admin/kb/entries/maternity.triplets/delete").status_code == 303
    assert count(svc, KbDraft) == 0


def test_delete_as_a_draft_then_discard(kb: KbSetup) -> None:
    c, svc = kb.console, kb.services
    assert c.editor.post(f"/admin/kb/entries/{ENTRY}/delete").status_code == 303
    with svc.sessions() as db:
        draft = db.scalar(select(KbDraft).where(KbDraft.key == ENTRY))
        assert draft is not None and draft.data is None
        draft_id = draft.id
    page = c.viewer.get("/admin/kb/drafts")
    assert "xóa" in page.text and f"-  - id: {ENTRY}" in html.unescape(page.text)
    assert "sẽ bị xóa" in c.viewer.get(f"/admin/kb/entries/{ENTRY}").text.lower()
    assert c.viewer.post(f"/admin/kb/drafts/{draft_id}/discard").status_code == 403
    assert c.editor.post(f"/admin/kb/drafts/{draft_id}/discard", csrf=False).status_code == 403
    assert c.editor.post(f"/admin/kb/drafts/{draft_id}/discard").status_code == 303
    assert count(svc, KbDraft) == 0
    assert c.editor.post(f"/admin/kb/drafts/{draft_id}/discard").status_code == 404
    assert [(a[0], a[1]) for a in actions(svc)] == [("kb.draft.delete", "editor"), ("kb.draft.discard", "editor")]


def test_parameters_get_a_dated_value_as_a_draft(kb: KbSetup) -> None:
    c, svc = kb.console, kb.services
    page = c.viewer.get("/admin/kb/parameters")
    assert page.status_code == 200 and "base_salary" in page.text and "2.530.000" in page.text
    assert 'name="effective_from"' not in page.text  # viewers read only
    r = c.editor.post("/admin/kb/parameters/base_salary",
                      {"value": "2.700.000", "effective_from": "2027-07-01", "source": "Nghị định 1/2027/NĐ-CP"})
    assert r.status_code == 303
    with svc.sessions() as db:
        draft = db.scalar(select(KbDraft).where(KbDraft.kind == "parameter"))
        assert draft is not None and draft.key == "base_salary"
        assert draft.data["values"][-1] == {"value": 2700000.0, "effective_from": "2027-07-01",
                                            "source": "Nghị định 1/2027/NĐ-CP"}
    assert "2.700.000" in c.viewer.get("/admin/kb/parameters").text
    diff = html.unescape(c.viewer.get("/admin/kb/drafts").text)
    assert '+      - {value: 2700000, effective_from: 2027-07-01, source: "Nghị định 1/2027/NĐ-CP"}' in diff
    same_day = c.editor.post("/admin/kb/parameters/base_salary",
                             {"value": "1", "effective_from": "2027-07-01", "source": "x"})
    assert same_day.status_code == 422 and "2027-07-01" in same_day.text
    bad = c.editor.post("/admin/kb/parameters/base_salary", {"value": "nhiều", "effective_from": "2028-01-01", "source": "x"})
    assert bad.status_code == 422 and "nhiều" in bad.text  # kept in the form
    assert c.editor.post("/admin/kb/parameters/no_such", {"value": "1", "effective_from": "2028-01-01",
                                                          "source": "x"}).status_code == 404
    assert c.viewer.post("/admin/kb/parameters/base_salary", {"value": "1", "effective_from": "2028-01-01",
                                                              "source": "x"}).status_code == 403
    assert [a[0] for a in actions(svc)] == ["kb.draft.parameter"]


# --- Publishing refused ----------------------------------------------------------------------------------


def test_publish_is_refused_on_an_invalid_draft(kb: KbSetup) -> None:
    c, svc = kb.console, kb.services
    other = live_entry(svc, "sickness.amount")
    form = entry_form(live_entry(svc, ENTRY))
    form["questions_vi"] += "\n" + other["questions_vi"][0]  # a question another entry has
    r = c.editor.post(f"/admin/kb/entries/{ENTRY}", form)
    assert r.status_code == 303
    saved = c.editor.get(r.headers["location"])
    collision = f"entry sickness.amount: question {other['questions_vi'][0]!r} is also a question of {ENTRY}"
    assert collision in html.unescape(saved.text)  # warned at once
    page = c.editor.post("/admin/kb/check")
    assert page.status_code == 200 and "không thể xuất bản" in page.text
    assert 'action="/admin/kb/publish"' not in page.text
    refused = c.editor.post("/admin/kb/publish", {"note": "try anyway", "checked": "whatever", "report": "{}"})
    assert refused.status_code == 409 and collision in html.unescape(refused.text)
    assert count(svc, KbVersion) == 1 and count(svc, KbDraft) == 1
    assert "kb.publish" not in [a[0] for a in actions(svc) if a[1] == "editor"]


def test_publish_needs_a_note_a_check_and_the_drafts_as_checked(kb: KbSetup) -> None:
    c, svc = kb.console, kb.services
    form = entry_form(live_entry(svc, ENTRY))
    form["questions_vi"] += "\n" + NEW_PHRASING
    assert c.editor.post(f"/admin/kb/entries/{ENTRY}", form).status_code == 303
    page = c.editor.post("/admin/kb/check")
    checked, report = hidden(page.text, "checked"), hidden(page.text, "report")
    assert c.editor.post("/admin/kb/publish", {"note": " ", "checked": checked, "report": report}).status_code == 422
    assert c.editor.post("/admin/kb/publish", {"note": "n", "checked": "", "report": ""}).status_code == 409
    # a draft saved after the check: what was checked is no longer what would be published
    form["answer_vi"] += "\n\nThêm một câu."
    assert c.editor.post(f"/admin/kb/entries/{ENTRY}", form).status_code == 303
    stale = c.editor.post("/admin/kb/publish", {"note": "n", "checked": checked, "report": report})
    assert stale.status_code == 409 and "check again" in stale.text
    assert count(svc, KbVersion) == 1
    assert check_and_publish(c, "after a fresh check").status_code == 303
    assert count(svc, KbVersion) == 2
    # nothing left to publish
    nothing = c.editor.post("/admin/kb/check")
    assert "Không có bản nháp nào" in nothing.text


# --- Who may do what -------------------------------------------------------------------------------------


def test_viewers_cannot_change_anything_anon_is_sent_to_login_and_csrf_is_enforced(kb: KbSetup) -> None:
    c, svc = kb.console, kb.services
    form = entry_form(live_entry(svc, ENTRY))
    changes: list[tuple[str, dict[str, str]]] = [
        (f"/admin/kb/entries/{ENTRY}", form),
        (f"/admin/kb/entries/{ENTRY}/delete", {}),
        ("/admin/kb/new", {**form, "id": "maternity.x-new"}),
        ("/admin/kb/parameters/base_salary", {"value": "1", "effective_from": "2030-01-01", "source": "x"}),
        ("/admin/kb/check", {}),
        ("/admin/kb/publish", {"note": "n", "checked": "x", "report": "{}"}),
        ("/admin/kb/versions/1/restore", {}),
    ]
    for path, data in changes:
        assert c.viewer.post(path, data).status_code == 403, path
        assert c.editor.post(path, data, csrf=False).status_code == 403, path
        assert c.anon.post(path, data).status_code == 401, path
    for path in ("/admin/kb/new", "/admin/kb/check"):
        assert c.viewer.get(path).status_code == 403, path
    for path in ("/admin/kb", f"/admin/kb/entries/{ENTRY}", "/admin/kb/parameters", "/admin/kb/drafts",
                 "/admin/kb/versions", "/admin/kb/versions/1"):
        assert c.viewer.get(path).status_code == 200, path
        r = c.anon.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next="), path
    assert c.viewer.get("/admin/kb/versions/99").status_code == 404
    assert count(svc, KbDraft) == 0 and count(svc, KbVersion) == 1
    assert actions(svc, "kb.draft") == []
