"""The review queue: what the bot could not answer, fed by the real pipeline, grouped, and resolved
by staff (phrasing, new entry, out of scope, dismiss) through the live console."""
from __future__ import annotations

import re
import threading
import uuid
from datetime import timedelta
from urllib.parse import parse_qs, urlparse

import httpx
from sqlalchemy import select, update

from app.console.drafts import draft_of, save_entry
from app.db.models import AuditLog, KbDraft, ReviewItem, utcnow
from tests.conftest import Console
from webhooks.base import InboundEvent

CAT = [  # one question asked five ways, two on Messenger; one carries a citizen ID
    ("web", "w1", "cho mình hỏi về con mèo nhà hàng xóm ạ"),
    ("web", "w2", "cho em hỏi về con mèo nhà hàng xóm ạ"),
    ("web", "w3", "cho mình hỏi về con mèo nhà hàng xóm với ạ"),
    ("messenger", "m1", "cho mình hỏi về con mèo nhà hàng xóm 012345678901 ạ"),
    ("messenger", "m2", "cho minh hoi ve con meo nha hang xom a"),
]
CLARIFY = "thẻ bảo hiểm"
ANSWERED = "mức đóng bhxh tự nguyện"
CITIZEN_ID = "012345678901"
PHRASING_TARGET = "general.employer-arrears"


def ask(console: Console, channel: str, user: str, text: str) -> str:
    """One message through the real pipeline; the id of the bot's reply."""
    handled = console.services.pipeline.handle(
        InboundEvent(channel=channel, user_id=user, text=text, event_id=uuid.uuid4().hex))
    assert handled is not None and handled.reply_id is not None
    return handled.reply_id


def feed(console: Console) -> dict[str, list[int]]:
    """The cat question five times, a clarify, and a thumbs-down on an answer: item ids by kind."""
    bot = console.services.bot
    for _, _, text in CAT:
        assert bot.reply(text).kind == "fallback", text
    assert bot.reply(CLARIFY).kind == "clarify"
    assert bot.reply(ANSWERED).kind == "faq"
    for channel, user, text in CAT:
        ask(console, channel, user, text)
    ask(console, "web", "w4", CLARIFY)
    liked_not = ask(console, "web", "w5", ANSWERED)
    assert console.services.pipeline.feedback(liked_not, False)
    with console.services.sessions() as db:
        rows = db.scalars(select(ReviewItem).order_by(ReviewItem.id)).all()
        by_reason: dict[str, list[int]] = {}
        for r in rows:
            by_reason.setdefault(r.reason, []).append(r.id)
    assert len(by_reason["fallback"]) == 5 and len(by_reason["clarify"]) == 1 and len(by_reason["dislike"]) == 1
    return by_reason


def groups_on(page: str) -> list[tuple[list[int], int, str]]:
    """The groups a list page shows: (item ids, count shown, the card's HTML)."""
    out = []
    for m in re.finditer(r'<section class="card review-group" data-ids="([\d,]*)">(.*?)</section>', page, re.S):
        count = re.search(r'<span class="badge warn"[^>]*>(\d+)</span>', m.group(2))
        assert count is not None
        out.append(([int(i) for i in m.group(1).split(",")], int(count.group(1)), m.group(2)))
    return out


def items(console: Console, ids: list[int]) -> list[ReviewItem]:
    with console.services.sessions() as db:
        return list(db.scalars(select(ReviewItem).where(ReviewItem.id.in_(ids)).order_by(ReviewItem.id)))


def audits(console: Console) -> list[AuditLog]:
    with console.services.sessions() as db:
        return list(db.scalars(select(AuditLog).where(AuditLog.action.startswith("review.")).order_by(AuditLog.id)))


def test_open_items_are_grouped_counted_and_masked(console: Console) -> None:
    ids = feed(console)
    r = console.viewer.get("/admin/review")
    assert r.status_code == 200
    groups = groups_on(r.text)
    assert [g[1] for g in groups] == [5, 1, 1]  # the largest group first
    cat_ids, _, card = groups[0]
    assert sorted(cat_ids) == ids["fallback"]
    assert "web 3" in card and "messenger 2" in card and "Không hiểu 5" in card
    assert "cho mình hỏi về con mèo nhà hàng xóm ạ" in card  # the oldest text represents the group
    assert card.count("/admin/kb/entries/") == 3  # the matcher's three best entries
    # the citizen ID is masked everywhere in the console, the last three digits aside
    assert CITIZEN_ID not in r.text
    group_page = console.viewer.get(f"/admin/review/groups?ids={','.join(map(str, cat_ids))}")
    assert group_page.status_code == 200
    assert CITIZEN_ID not in group_page.text and "•••••••••901" in group_page.text
    # counts per reason at the top
    counts = dict(re.findall(r'data-reason="(\w+)">[^<]*<strong>(\d+)</strong>', r.text))
    assert counts == {"fallback": "5", "clarify": "1", "dislike": "1", "handover": "0", "flagged": "0"}


def test_filters_by_reason_channel_and_period(console: Console) -> None:
    ids = feed(console)
    only_dislike = groups_on(console.viewer.get("/admin/review?reason=dislike").text)
    assert [g[0] for g in only_dislike] == [ids["dislike"]] and ANSWERED in only_dislike[0][2]
    messenger = groups_on(console.viewer.get("/admin/review?channel=messenger").text)
    assert sorted(i for g in messenger for i in g[0]) == ids["fallback"][3:]  # the two asked on Messenger
    with console.services.sessions() as db:  # two of the cat questions were asked long ago
        db.execute(update(ReviewItem).where(ReviewItem.id.in_(ids["fallback"][:2]))
                   .values(created_at=utcnow() - timedelta(days=40)))
        db.commit()
    recent = groups_on(console.viewer.get("/admin/review?period=30").text)
    assert recent[0][1] == 3 and set(recent[0][0]) == set(ids["fallback"][2:])
    assert groups_on(console.viewer.get("/admin/review?period=90").text)[0][1] == 5
    page = console.viewer.get("/admin/review?period=7&lang=en")
    assert "Review queue" in page.text and "open items" in page.text


def test_group_page_lists_every_member_with_its_conversation(console: Console) -> None:
    ids = feed(console)
    cat = ids["fallback"]
    page = console.editor.get(f"/admin/review/groups?ids={','.join(map(str, cat))}").text
    for item in items(console, cat):
        assert f'/admin/conversations/{item.conversation_id}"' in page
        assert f'name="ids" value="{item.id}" checked' in page  # all selected by default
    assert 'formaction="/admin/review/phrasing"' in page and 'value="oos.chitchat"' in page
    # the phrasing text defaults to the representative text; the language is detected
    assert ">cho mình hỏi về con mèo nhà hàng xóm ạ</textarea>" in page
    assert '<option value="vi" selected>' in page
    assert console.viewer.get("/admin/review/groups?ids=999999").status_code == 404
    assert console.viewer.get("/admin/review/groups?ids=x").status_code == 404


def test_add_as_phrasing_drafts_the_question_and_resolves_the_group(console: Console) -> None:
    ids = feed(console)
    cat = ids["fallback"]
    text = "cho mình hỏi về con mèo nhà hàng xóm"
    r = console.editor.post("/admin/review/phrasing", {
        "ids": [str(i) for i in cat], "group": ",".join(map(str, cat)), "text": text, "lang": "vi",
        "entry_id": PHRASING_TARGET, "next": "/admin/review?channel=web"})
    assert r.status_code == 303
    location = r.headers["location"]
    assert location.startswith("/admin/review?channel=web&") and "done=phrasing" in location and "n=5" in location
    with console.services.sessions() as db:
        draft = draft_of(db, "entry", PHRASING_TARGET)
        assert draft is not None and draft.data is not None and draft.updated_by == "editor"
        assert draft.data["questions_vi"][-1] == text
        live = console.services.bot.kb.by_id[PHRASING_TARGET]
        assert draft.data["questions_vi"][:-1] == list(live.questions_vi)  # the live entry is untouched
    assert text not in console.services.bot.kb.by_id[PHRASING_TARGET].questions_vi
    for item in items(console, cat):
        assert (item.status, item.action, item.resolved_by) == ("resolved", "phrasing", "editor")
        assert item.resolved_at is not None
        assert item.detail == {"entry_id": PHRASING_TARGET, "text": text, "lang": "vi", "added": True}
    [row] = audits(console)
    assert (row.actor, row.action, row.target) == ("editor", "review.phrasing", PHRASING_TARGET)
    assert sorted(i["id"] for i in row.before["items"]) == cat
    assert {i["status"] for i in row.before["items"]} == {"open"}
    assert row.after["action"] == "phrasing" and row.after["detail"]["text"] == text and row.after["skipped"] == []
    # the flash says it is a draft and links to it; the group is gone from the open list
    page = console.editor.get(location)
    assert "bản nháp" in page.text and f'href="/admin/kb/entries/{PHRASING_TARGET}"' in page.text
    assert all(not set(g[0]) & set(cat) for g in groups_on(page.text))
    resolved = console.viewer.get("/admin/review/resolved?action=phrasing").text
    assert resolved.count(f"<code>{PHRASING_TARGET}</code>") == 5 and "editor" in resolved
    assert CITIZEN_ID not in resolved
    # the same question asked again is a new item; the resolved ones stay resolved
    ask(console, "web", "w9", CAT[0][2] + " nhé")
    again = groups_on(console.viewer.get("/admin/review").text)
    assert not set(again[0][0]) & set(cat)


def test_a_phrasing_is_added_once(console: Console) -> None:
    ids = feed(console)
    cat = ids["fallback"]
    form = {"text": "con mèo nhà hàng xóm", "lang": "vi", "entry_id": PHRASING_TARGET}
    assert console.editor.post("/admin/review/phrasing", {**form, "ids": [str(cat[0])]}).status_code == 303
    assert console.editor.post("/admin/review/phrasing", {**form, "ids": [str(cat[1])]}).status_code == 303
    with console.services.sessions() as db:
        draft = draft_of(db, "entry", PHRASING_TARGET)
        assert draft is not None and draft.data["questions_vi"].count("con mèo nhà hàng xóm") == 1
    first, second = items(console, cat[:2])
    assert first.detail["added"] is True and second.detail["added"] is False
    assert second.status == "resolved"  # the question is taught either way


def test_draft_a_new_entry_resolves_and_opens_the_editor(console: Console) -> None:
    ids = feed(console)
    r = console.editor.post("/admin/review/new-entry", {"ids": [str(i) for i in ids["clarify"]], "text": " thẻ  bảo hiểm ",
                                                        "lang": ""})
    assert r.status_code == 303
    target = urlparse(r.headers["location"])
    assert target.path == "/admin/kb/new" and parse_qs(target.query)["question"] == [CLARIFY]
    [item] = items(console, ids["clarify"])
    assert (item.status, item.action, item.resolved_by, item.detail) == (
        "resolved", "new_entry", "editor", {"text": CLARIFY, "lang": "vi"})
    [row] = audits(console)
    assert (row.action, row.target, row.after["items"]) == ("review.new_entry", "-", ids["clarify"])
    with console.services.sessions() as db:
        assert db.scalar(select(KbDraft)) is None  # the editor makes the draft, not the review queue


def test_mark_out_of_scope_teaches_a_declining_entry(console: Console) -> None:
    ids = feed(console)
    cat = ids["fallback"]
    # a faq entry is not an out-of-scope one: refused, nothing changes
    refused = console.admin.post("/admin/review/out-of-scope", {
        "ids": [str(i) for i in cat], "group": ",".join(map(str, cat)), "text": "con mèo nhà hàng xóm",
        "oos_id": PHRASING_TARGET})
    assert refused.status_code == 422 and "không phải mục ngoài phạm vi" in refused.text
    assert {i.status for i in items(console, cat)} == {"open"} and audits(console) == []
    r = console.admin.post("/admin/review/out-of-scope", {
        "ids": [str(i) for i in cat], "text": "con mèo nhà hàng xóm", "lang": "vi", "oos_id": "oos.chitchat"})
    assert r.status_code == 303 and "done=out_of_scope" in r.headers["location"]
    with console.services.sessions() as db:
        draft = draft_of(db, "entry", "oos.chitchat")
        assert draft is not None and "con mèo nhà hàng xóm" in draft.data["questions_vi"]
        assert draft.data["kind"] == "out_of_scope"
    assert {(i.action, i.resolved_by) for i in items(console, cat)} == {("out_of_scope", "admin")}
    [row] = audits(console)
    assert (row.action, row.target) == ("review.out_of_scope", "oos.chitchat")


def test_dismiss_with_a_note(console: Console) -> None:
    ids = feed(console)
    r = console.editor.post("/admin/review/dismiss", {"ids": ",".join(map(str, ids["dislike"])),
                                                      "note": "trả lời đúng"})
    assert r.status_code == 303 and "done=dismissed" in r.headers["location"]
    [item] = items(console, ids["dislike"])
    assert (item.status, item.action, item.detail) == ("resolved", "dismissed", {"note": "trả lời đúng"})
    [row] = audits(console)
    assert (row.action, row.target, row.before["items"][0]["reason"]) == ("review.dismissed", "-", "dislike")
    assert "Đã bỏ qua 1 mục" in console.editor.get(r.headers["location"]).text
    assert "trả lời đúng" in console.viewer.get("/admin/review/resolved").text


def test_personal_numbers_are_never_taught(console: Console) -> None:
    ids = feed(console)
    cat = ids["fallback"]
    for text in (CAT[3][2], "cho mình hỏi về con mèo •••••••••901"):
        r = console.editor.post("/admin/review/phrasing", {"ids": [str(i) for i in cat], "text": text,
                                                           "entry_id": PHRASING_TARGET})
        assert r.status_code == 422 and "số cá nhân" in r.text
        assert CITIZEN_ID not in r.text
    r = console.editor.post("/admin/review/phrasing", {"ids": [str(i) for i in cat], "text": "mèo",
                                                       "entry_id": "no.such"})
    assert r.status_code == 422 and "no.such" in r.text
    r = console.editor.post("/admin/review/dismiss", {"group": ",".join(map(str, cat)), "note": "nothing selected"})
    assert r.status_code == 422 and "ít nhất một mục" in r.text
    assert console.editor.post("/admin/review/dismiss", {"note": "no group either"}).status_code == 422
    assert {i.status for i in items(console, cat)} == {"open"} and audits(console) == []
    with console.services.sessions() as db:
        assert db.scalar(select(KbDraft)) is None


def test_roles_csrf_and_login(console: Console) -> None:
    ids = feed(console)
    cat = ",".join(map(str, ids["fallback"]))
    actions = {
        "/admin/review/phrasing": {"ids": cat, "text": "mèo", "entry_id": PHRASING_TARGET},
        "/admin/review/new-entry": {"ids": cat, "text": "mèo"},
        "/admin/review/out-of-scope": {"ids": cat, "text": "mèo", "oos_id": "oos.chitchat"},
        "/admin/review/dismiss": {"ids": cat},
    }
    for path, form in actions.items():
        assert console.viewer.post(path, form).status_code == 403, path
        assert console.editor.post(path, form, csrf=False).status_code == 403, path
        assert console.anon.post(path, form).status_code == 401, path
    assert {i.status for i in items(console, ids["fallback"])} == {"open"} and audits(console) == []
    # a viewer reads the queue and the group but gets no action form
    assert console.viewer.get("/admin/review").status_code == 200
    page = console.viewer.get(f"/admin/review/groups?ids={cat}").text
    assert "formaction=" not in page and 'name="ids"' not in page
    assert "/admin/review/dismiss" not in console.viewer.get("/admin/review").text
    for path in ("/admin/review", "/admin/review/resolved", f"/admin/review/groups?ids={cat}"):
        r = console.anon.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/admin/login?next="), path
    assert console.anon.get("/admin/api/entries?q=bhyt").status_code == 401


def test_entry_search(console: Console) -> None:
    r = console.viewer.get("/admin/api/entries", params={"q": "mất thẻ bhyt"})
    assert r.status_code == 200
    data = r.json()
    assert data["ranked"][0]["id"].startswith("health_insurance.") and data["ranked"][0]["score"] > 0
    folded = console.viewer.get("/admin/api/entries", params={"q": "the bhyt"}).json()  # no diacritics
    assert any(m["id"].startswith("health_insurance.") for m in folded["matches"])
    by_id = console.viewer.get("/admin/api/entries", params={"q": "oos.chit"}).json()
    assert [m["id"] for m in by_id["matches"]] == ["oos.chitchat"] and by_id["matches"][0]["kind"] == "out_of_scope"
    assert console.viewer.get("/admin/api/entries", params={"q": " "}).json() == {"q": "", "ranked": [], "matches": []}


def test_a_drafted_new_entry_can_be_found_and_taught(console: Console) -> None:
    ids = feed(console)
    with console.services.sessions() as db:  # what the knowledge-base editor saves for a new entry
        save_entry(db, {"id": "general.neighbours-pets", "kind": "faq", "regime": "general",
                        "questions_vi": ["Vật nuôi nhà hàng xóm có liên quan BHXH không?"],
                        "answer_vi": "Không, BHXH không giải quyết việc này."}, "editor")
        db.commit()
    found = console.viewer.get("/admin/api/entries", params={"q": "vat nuoi"}).json()["matches"]
    assert [(m["id"], m["draft"]) for m in found] == [("general.neighbours-pets", True)]
    r = console.editor.post("/admin/review/phrasing", {
        "ids": [str(i) for i in ids["fallback"]], "text": "con mèo nhà hàng xóm", "entry_id": "general.neighbours-pets"})
    assert r.status_code == 303
    with console.services.sessions() as db:
        draft = draft_of(db, "entry", "general.neighbours-pets")
        assert draft is not None and draft.data["questions_vi"][-1] == "con mèo nhà hàng xóm"


def test_already_resolved_items_are_skipped(console: Console) -> None:
    ids = feed(console)
    cat = ids["fallback"]
    assert console.editor.post("/admin/review/dismiss", {"ids": [str(cat[0])]}).status_code == 303
    # a second staff member, on a stale page, acts on the whole group: the dismissed one is skipped
    r = console.admin.post("/admin/review/phrasing", {"ids": [str(i) for i in cat], "text": "con mèo",
                                                      "entry_id": PHRASING_TARGET})
    assert r.status_code == 303 and "n=4" in r.headers["location"] and "skipped=1" in r.headers["location"]
    first, *rest = items(console, cat)
    assert (first.action, first.resolved_by) == ("dismissed", "editor")
    assert {(i.action, i.resolved_by) for i in rest} == {("phrasing", "admin")}
    assert audits(console)[-1].after["skipped"] == [cat[0]]
    assert "1 mục đã được người khác xử lý" in console.admin.get(r.headers["location"]).text
    # and once all are resolved, acting again changes nothing
    before = len(audits(console))
    again = console.editor.post("/admin/review/dismiss", {"ids": [str(i) for i in cat],
                                                          "group": ",".join(map(str, cat))})
    assert again.status_code == 409 and "đã được xử lý" in again.text
    assert len(audits(console)) == before
    assert [i.action for i in items(console, cat)] == ["dismissed"] + ["phrasing"] * 4


def test_concurrent_resolves_apply_once(console: Console) -> None:
    ids = feed(console)
    cat = [str(i) for i in ids["fallback"]]
    for n in range(3):  # several races, so that a lucky ordering does not hide a double apply
        with console.services.sessions() as db:
            db.execute(update(ReviewItem).values(status="open", action=None, detail=None, resolved_by=None,
                                                 resolved_at=None))
            db.commit()
        results: dict[str, httpx.Response] = {}
        barrier = threading.Barrier(2)

        def act(who: str, entry_id: str) -> None:
            client = getattr(console, who)
            barrier.wait()
            results[who] = client.post("/admin/review/phrasing", {"ids": cat, "text": f"con mèo số {n}",
                                                                  "entry_id": entry_id})

        threads = [threading.Thread(target=act, args=("editor", PHRASING_TARGET)),
                   threading.Thread(target=act, args=("admin", "smalltalk.greeting"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r.status_code for r in results.values())
        assert statuses == [303, 409], {k: (v.status_code, v.text[:300]) for k, v in results.items()}
        winner = next(k for k, v in results.items() if v.status_code == 303)
        assert {i.resolved_by for i in items(console, ids["fallback"])} == {winner}
        round_audits = [a for a in audits(console) if a.after["detail"]["text"] == f"con mèo số {n}"]
        assert len(round_audits) == 1 and round_audits[0].actor == winner
        with console.services.sessions() as db:
            taught = [d.key for d in db.scalars(select(KbDraft))
                      if f"con mèo số {n}" in (d.data or {}).get("questions_vi", [])]
        assert taught == [PHRASING_TARGET if winner == "editor" else "smalltalk.greeting"]


def test_concurrent_phrasings_of_one_entry_both_land(console: Console) -> None:
    ids = feed(console)
    cat = [str(i) for i in ids["fallback"]]
    form = {"entry_id": PHRASING_TARGET, "lang": "vi"}
    r = console.editor.post("/admin/review/phrasing", {**form, "ids": cat[0], "text": "mèo số không"})
    assert r.status_code == 303
    for first, second in ((1, 2), (3, 4)):  # the entry has a draft: each race read-modify-writes it
        results: list[int] = []
        barrier = threading.Barrier(2)

        def act(who: str, i: int) -> None:
            barrier.wait()
            results.append(getattr(console, who).post("/admin/review/phrasing",
                                                      {**form, "ids": cat[i], "text": f"mèo số {i}"}).status_code)

        threads = [threading.Thread(target=act, args=("editor", first)),
                   threading.Thread(target=act, args=("admin", second))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [303, 303]
    with console.services.sessions() as db:
        draft = draft_of(db, "entry", PHRASING_TARGET)
        assert draft is not None
        taught = [q for q in draft.data["questions_vi"] if q.startswith("mèo số")]
        assert sorted(taught) == sorted(["mèo số không", "mèo số 1", "mèo số 2", "mèo số 3", "mèo số 4"])  # none lost
    assert len(audits(console)) == 5
