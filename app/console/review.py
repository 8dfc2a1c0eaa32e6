"""Console: the review queue: what the bot could not answer, grouped, and staff's decision on each group."""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, NamedTuple
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import Select, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.bot import Bot
from app.console.deps import DbSession, EditorAction, ServicesDep, Staff, Viewer, audit, render, tr
from app.console.drafts import DraftError, add_phrasing, current_entry
from app.console.grouping import Group, group_items
from app.db.models import KbDraft, ReviewItem, utcnow
from app.privacy import has_pii
from app.services import Services
from intents.normalize import detect_language, fold

router = APIRouter()

REASONS = ("fallback", "clarify", "dislike", "handover", "flagged")
CHANNELS = ("web", "messenger", "zalo")
PERIODS = {"7": 7, "30": 30, "90": 90, "all": None}  # days back; "all": no limit
ACTIONS = ("phrasing", "new_entry", "out_of_scope", "dismissed")
GROUPS_PER_PAGE = 30
RESOLVED_PER_PAGE = 50
MAX_OPEN = 5000  # newest open items grouped per view: grouping is quadratic-ish, the rest waits
MAX_GROUP_IDS = 500  # one group page (and one form post) holds at most this many items
SAMPLES = 3  # member texts shown under a group's representative on the list
SUGGESTED = 3  # the matcher's candidates shown per group
SEARCH_LIMIT = 10
ENTRY_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,79}$")


# --- Filters -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The list's filters, as validated from the query string (unknown values mean "any")."""

    reason: str = ""
    channel: str = ""
    period: str = "all"

    @classmethod
    def parse(cls, reason: str, channel: str, period: str) -> Filters:
        return cls(reason if reason in REASONS else "", channel if channel in CHANNELS else "",
                   period if period in PERIODS else "all")

    def since(self) -> datetime | None:
        days = PERIODS[self.period]
        return utcnow() - timedelta(days=days) if days else None

    def apply(self, q: Select[Any], reason: bool = True) -> Select[Any]:
        if reason and self.reason:
            q = q.where(ReviewItem.reason == self.reason)
        if self.channel:
            q = q.where(ReviewItem.channel == self.channel)
        since = self.since()
        if since is not None:
            q = q.where(ReviewItem.created_at >= since)
        return q

    def query(self, **extra: object) -> str:
        """The filters (and `extra`) as a query string, empty values left out."""
        params = {"reason": self.reason, "channel": self.channel,
                  "period": self.period if self.period != "all" else "", **extra}
        return urlencode({k: v for k, v in params.items() if v not in ("", None)})


# --- What the matcher and the knowledge base say -------------------------------------------------


class Suggestion(NamedTuple):
    id: str
    kind: str
    question: str
    score: float | None = None
    draft: bool = False  # the entry exists only as an unpublished draft


def _question(questions_vi: list[str], questions_en: list[str] | None, lang: str) -> str:
    """An entry's canonical question in the staff member's language (Vietnamese if no English)."""
    return (questions_en or questions_vi)[0] if lang == "en" else questions_vi[0]


def suggest(bot: Bot, text: str, lang: str, limit: int = SUGGESTED) -> tuple[str, list[Suggestion]]:
    """What the live bot decides for `text` now ("faq", "clarify", "fallback"...) and its best entries."""
    decision = bot.matcher.decide(text)
    return decision.kind, [
        Suggestion(c.entry.id, c.entry.kind, _question(c.entry.questions_vi, c.entry.questions_en, lang),
                   round(c.score, 3))
        for c in decision.candidates[:limit]
    ]


def catalog(db: Session, bot: Bot, lang: str) -> list[tuple[Suggestion, list[str]]]:
    """Every entry as it will be published (the live ones, unpublished drafts laid over them),
    each with its id and questions, what the entry search looks in."""
    entries = {
        e.id: (Suggestion(e.id, e.kind, _question(e.questions_vi, e.questions_en, lang)),
               [e.id, *e.questions_vi, *e.questions_en])
        for e in bot.kb.entries
    }
    for draft in db.scalars(select(KbDraft).where(KbDraft.kind == "entry")):
        data = draft.data
        if data is None:
            entries.pop(draft.key, None)  # deleted in the draft: no longer a target
        elif data.get("questions_vi"):
            info = Suggestion(draft.key, data.get("kind") or "faq",
                              _question(data["questions_vi"], data.get("questions_en"), lang),
                              draft=draft.key not in bot.kb.by_id)
            entries[draft.key] = (info, [draft.key, *data["questions_vi"], *(data.get("questions_en") or [])])
    return [entries[k] for k in sorted(entries)]


def search_entries(db: Session, bot: Bot, q: str, lang: str, limit: int = SEARCH_LIMIT) -> dict[str, Any]:
    """The matcher's ranking of `q`, and the entries whose id or a question contains it (folded)."""
    q = " ".join(q.split())[:200]
    if not q:
        return {"q": q, "ranked": [], "matches": []}
    _, ranked = suggest(bot, q, lang, limit)
    needle = fold(q.lower())
    matches = [info for info, texts in catalog(db, bot, lang) if any(needle in fold(t.lower()) for t in texts)]
    return {"q": q, "ranked": [s._asdict() for s in ranked], "matches": [s._asdict() for s in matches[:limit]]}


# --- Reading the queue -------------------------------------------------------------------------


@dataclass
class GroupView:
    """One group as the list shows it."""

    group: Group
    samples: list[str]
    decision: str
    suggestions: list[Suggestion]
    link: str
    ids: list[int] = field(default_factory=list)  # the ids the group page and the quick actions get


def open_items(db: Session, f: Filters) -> tuple[list[ReviewItem], bool]:
    """The newest MAX_OPEN open items under the filters, oldest first; True if there were more."""
    q = f.apply(select(ReviewItem).where(ReviewItem.status == "open"))
    rows = list(db.scalars(q.order_by(ReviewItem.created_at.desc(), ReviewItem.id.desc()).limit(MAX_OPEN + 1)))
    return list(reversed(rows[:MAX_OPEN])), len(rows) > MAX_OPEN


def reason_counts(db: Session, f: Filters) -> dict[str, int]:
    """Open items per reason under the channel and period filters (the reason is what they pick)."""
    q = f.apply(select(ReviewItem.reason, func.count()).where(ReviewItem.status == "open"), reason=False)
    found = {str(reason): int(n) for reason, n in db.execute(q.group_by(ReviewItem.reason)).all()}
    return {r: found.get(r, 0) for r in REASONS}


def _samples(group: Group) -> list[str]:
    """A few other wordings in the group (distinct, newest first), besides the representative."""
    seen = {" ".join(group.text.lower().split())}
    out: list[str] = []
    for item in sorted(group.items, key=lambda i: i.created_at, reverse=True):
        key = " ".join(item.text.lower().split())
        if key not in seen:
            seen.add(key)
            out.append(item.text)
            if len(out) >= SAMPLES:
                break
    return out


def group_link(ids: list[int]) -> str:
    return "/admin/review/groups?" + urlencode({"ids": ",".join(map(str, ids[:MAX_GROUP_IDS]))})


def group_view(bot: Bot, group: Group, lang: str) -> GroupView:
    decision, suggestions = suggest(bot, group.text, lang)
    ids = group.ids[:MAX_GROUP_IDS]
    return GroupView(group, _samples(group), decision, suggestions, group_link(ids), ids)


def parse_ids(raw: str | list[str] | None) -> list[int]:
    """Item ids from "1,2,3" or a list of form values: positive integers, unique, in order, capped."""
    parts = raw.split(",") if isinstance(raw, str) else [p for v in (raw or []) for p in v.split(",")]
    ids: dict[int, None] = {}  # ordered and unique
    for p in parts:
        p = p.strip()
        if p.isascii() and p.isdigit() and 0 < int(p) < 2**31:  # an INTEGER column: larger is no id
            ids[int(p)] = None
            if len(ids) >= MAX_GROUP_IDS:
                break
    return list(ids)


# --- Pages -------------------------------------------------------------------------------------


def _done_message(staff: Staff, done: str, n: int, skipped: int, entry: str) -> str | None:
    """The confirmation after an action (built from codes: nothing the URL says is echoed as text)."""
    if done not in ACTIONS:
        return None
    _ = tr(staff.lang)
    text = {
        "phrasing": _(f"Đã thêm câu hỏi vào bản nháp của mục {entry} và xử lý {n} mục. Thay đổi có hiệu lực khi "
                      "bản nháp được xuất bản.",
                      f"Added the question to the draft of {entry} and resolved {n} items. It goes live when the "
                      "drafts are published."),
        "new_entry": _(f"Đã xử lý {n} mục.", f"Resolved {n} items."),
        "out_of_scope": _(f"Đã thêm vào mục ngoài phạm vi {entry} (bản nháp) và xử lý {n} mục. Bot sẽ từ chối "
                          "câu hỏi này sau khi xuất bản.",
                          f"Added to the out-of-scope entry {entry} (a draft) and resolved {n} items. The bot "
                          "declines this question once the drafts are published."),
        "dismissed": _(f"Đã bỏ qua {n} mục.", f"Dismissed {n} items."),
    }[done]
    if skipped:
        text += " " + _(f"{skipped} mục đã được người khác xử lý trước nên bị bỏ qua.",
                        f"{skipped} items had already been resolved by someone else and were skipped.")
    return text


@router.get("/admin/review", response_class=HTMLResponse, include_in_schema=False)
def review_page(
    request: Request, staff: Viewer, db: DbSession, svc: ServicesDep, reason: str = "", channel: str = "",
    period: str = "all", page: int = 1, done: str = "", n: int = 0, skipped: int = 0, entry: str = "",
) -> Response:
    f = Filters.parse(reason, channel, period)
    items, truncated = open_items(db, f)
    groups = group_items(items)
    pages = max(1, -(-len(groups) // GROUPS_PER_PAGE))
    page = min(max(page, 1), pages)
    shown = [group_view(svc.bot, g, staff.lang) for g in groups[(page - 1) * GROUPS_PER_PAGE: page * GROUPS_PER_PAGE]]
    entry = entry if ENTRY_ID.match(entry) else ""
    return render(request, "console/review.html", {
        "filters": f, "counts": reason_counts(db, f), "groups": shown, "group_total": len(groups),
        "item_total": len(items), "truncated": truncated, "page": page, "pages": pages,
        "reasons": REASONS, "channels": CHANNELS, "periods": PERIODS, "max_open": MAX_OPEN,
        "done": _done_message(staff, done, max(n, 0), max(skipped, 0), entry), "done_action": done, "done_entry": entry,
        "back": "/admin/review" + (f"?{f.query()}" if f.query() else ""),
    })


@router.get("/admin/review/resolved", response_class=HTMLResponse, include_in_schema=False)
def resolved_page(request: Request, staff: Viewer, db: DbSession, action: str = "", page: int = 1) -> Response:
    q = select(ReviewItem).where(ReviewItem.status == "resolved")
    action = action if action in ACTIONS + ("chosen",) else ""
    if action:
        q = q.where(ReviewItem.action == action)
    page = max(page, 1)
    rows = list(db.scalars(q.order_by(ReviewItem.resolved_at.desc(), ReviewItem.id.desc())
                            .offset((page - 1) * RESOLVED_PER_PAGE).limit(RESOLVED_PER_PAGE + 1)))
    return render(request, "console/review_resolved.html", {
        "rows": rows[:RESOLVED_PER_PAGE], "more": len(rows) > RESOLVED_PER_PAGE, "page": page, "action": action,
        "actions": ACTIONS + ("chosen",),
    })


@dataclass
class FormState:
    """What the group page's action form holds (its defaults, or what was posted back with an error)."""

    text: str | None = None
    lang: str | None = None
    entry_id: str = ""
    oos_id: str = ""
    note: str = ""
    selected: list[int] | None = None  # None: every open member
    next: str = "/admin/review"


def _count(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def render_group(request: Request, staff: Staff, db: Session, bot: Bot, ids: list[int],
                 form: FormState | None = None, error: str | None = None, status_code: int = 200) -> Response:
    """The group page: every member, the matcher's suggestions, and the action form."""
    if not ids:
        raise HTTPException(404, tr(staff.lang)("Không có mục nào được chọn.", "No review items given."))
    members = list(db.scalars(select(ReviewItem).where(ReviewItem.id.in_(ids))
                              .order_by(ReviewItem.created_at, ReviewItem.id)))
    if not members:
        raise HTTPException(404, tr(staff.lang)("Không tìm thấy mục cần xem xét này.", "No such review items."))
    form = form or FormState()
    open_members = [m for m in members if m.status == "open"]
    representative = (open_members or members)[0]
    text = form.text if form.text is not None else representative.text
    decision, suggestions = suggest(bot, representative.text, staff.lang)
    oos = [info for info, _texts in catalog(db, bot, staff.lang) if info.kind == "out_of_scope"]
    first_faq = next((s.id for s in suggestions if s.kind == "faq"), suggestions[0].id if suggestions else "")
    first_oos = next((s.id for s in suggestions if s.kind == "out_of_scope"), oos[0].id if oos else "")
    selected = set(form.selected) if form.selected is not None else {m.id for m in open_members}
    return render(request, "console/review_group.html", {
        "members": members, "open_count": len(open_members), "all_ids": ",".join(str(m.id) for m in members),
        "first": members[0].created_at, "last": max(m.created_at for m in members),
        "text": text, "text_lang": form.lang or detect_language(text), "decision": decision,
        "suggestions": suggestions, "entry_id": form.entry_id or first_faq, "oos": oos,
        "oos_id": form.oos_id or first_oos, "note": form.note, "selected": selected, "next": form.next,
        "channel_counts": _count(m.channel for m in members), "reason_counts": _count(m.reason for m in members),
        "flash": error, "flash_kind": "error", "link": group_link([m.id for m in members]),
    }, status_code=status_code)


@router.get("/admin/review/groups", response_class=HTMLResponse, include_in_schema=False)
def group_page(request: Request, staff: Viewer, db: DbSession, svc: ServicesDep, ids: str = "",
               next: str = "/admin/review") -> Response:  # noqa: A002 - the usual name
    return render_group(request, staff, db, svc.bot, parse_ids(ids), FormState(next=_safe_back(next)))


@router.get("/admin/api/entries", include_in_schema=False)
def entries_api(staff: Viewer, db: DbSession, svc: ServicesDep, q: str = "") -> Response:
    return JSONResponse(search_entries(db, svc.bot, q, staff.lang))


# --- Actions -----------------------------------------------------------------------------------


class Refused(Exception):
    """An action that cannot be done as asked: the group page shows why (`status` is the HTTP code)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


def _safe_back(target: str | None) -> str:
    """Where to return after an action: a review list page only (never another site)."""
    if target and target.startswith("/admin/review") and not target.startswith("//") and "\\" not in target:
        return target
    return "/admin/review"


def claim(db: Session, ids: list[int], action: str, detail: dict[str, Any], actor: str) -> list[tuple[int, str]]:
    """Resolve those of `ids` that are still open, in one conditional UPDATE: an item someone else
    resolved meanwhile is not touched (PostgreSQL re-checks the condition after the row lock;
    SQLite has one writer at a time). Returns (id, reason) of the items this call resolved."""
    stmt = (
        update(ReviewItem)
        .where(ReviewItem.id.in_(ids), ReviewItem.status == "open")
        .values(status="resolved", action=action, detail=detail, resolved_by=actor, resolved_at=utcnow())
        .returning(ReviewItem.id, ReviewItem.reason)
        .execution_options(synchronize_session=False)
    )
    return sorted((int(i), str(r)) for i, r in db.execute(stmt).all())


def _clean_text(staff: Staff, text: str) -> str:
    """The phrasing or question to teach: one line, and never a citizen's personal number."""
    _ = tr(staff.lang)
    text = " ".join((text or "").split())
    if not text:
        raise Refused(_("Câu hỏi đang trống.", "The question is empty."))
    if len(text) > 500:
        raise Refused(_("Câu hỏi quá dài (tối đa 500 ký tự).", "The question is too long (500 characters at most)."))
    if has_pii(text) or "•" in text:
        raise Refused(_("Câu hỏi còn chứa số cá nhân (đã che): hãy xóa chúng trước khi thêm vào kho tri thức.",
                        "The question still holds a personal number (masked): remove it before teaching the bot."))
    return text


def _target_entry(staff: Staff, db: Session, bot: Bot, entry_id: str, out_of_scope: bool) -> str:
    """The entry a phrasing goes to: it must exist (live or drafted); for out of scope, be one."""
    _ = tr(staff.lang)
    entry_id = entry_id.strip()
    data = current_entry(db, bot.kb, entry_id) if ENTRY_ID.match(entry_id) else None
    if data is None:
        raise Refused(_(f"Không có mục {entry_id!r} trong kho tri thức.", f"There is no entry {entry_id!r}."))
    if out_of_scope and data.get("kind") != "out_of_scope":
        raise Refused(_(f"Mục {entry_id} không phải mục ngoài phạm vi.", f"{entry_id} is not an out-of-scope entry."))
    return entry_id


def _lock_draft(db: Session, entry_id: str) -> None:
    """Lock the entry's draft row (PostgreSQL) and re-read it, so two phrasings added at once to
    one entry both land instead of the later overwriting the earlier."""
    db.execute(select(KbDraft).where(KbDraft.kind == "entry", KbDraft.key == entry_id)
               .with_for_update().execution_options(populate_existing=True)).all()


def resolve(request: Request, staff: Staff, db: Session, bot: Bot, ids: list[int], action: str,
            target: str, detail: dict[str, Any], entry_lang: str | None = None) -> tuple[list[int], list[int]]:
    """Resolve the open ones of `ids` with `action`, teach the bot if the action says so, and
    audit it: one transaction. Returns (resolved ids, skipped ids); raises Refused."""
    _ = tr(staff.lang)
    if not ids:
        raise Refused(_("Hãy chọn ít nhất một mục.", "Select at least one item."))
    claimed = claim(db, ids, action, detail, staff.username)
    if not claimed:
        db.rollback()
        raise Refused(_("Các mục này đã được xử lý rồi (có thể bởi người khác): không có gì thay đổi.",
                        "These items were already resolved (perhaps by someone else): nothing changed."), 409)
    if action in ("phrasing", "out_of_scope"):
        _lock_draft(db, target)
        try:
            added = add_phrasing(db, bot.kb, target, detail["text"], entry_lang or "vi", staff.username)
        except DraftError as exc:
            db.rollback()
            raise Refused(str(exc)) from exc
        except IntegrityError as exc:  # two first drafts of one entry at once: the other one won
            db.rollback()
            raise Refused(_("Mục này vừa được người khác sửa: hãy thử lại.",
                            "Someone else changed this entry at the same moment: try again."), 409) from exc
        # "added": False when the entry already had the question: the outcome holds all the same
        detail = {**detail, "added": added}
        db.execute(update(ReviewItem).where(ReviewItem.id.in_([i for i, _r in claimed]))
                   .values(detail=detail).execution_options(synchronize_session=False))
    resolved = [i for i, _r in claimed]
    skipped = sorted(set(ids) - set(resolved))
    audit(db, staff, f"review.{action}", target,
          before={"items": [{"id": i, "reason": r, "status": "open"} for i, r in claimed]},
          after={"status": "resolved", "action": action, "detail": detail, "items": resolved, "skipped": skipped},
          request=request)
    db.commit()
    return resolved, skipped


FormIds = Annotated[list[str] | None, Form()]
FormText = Annotated[str, Form()]


def _refused(request: Request, staff: Staff, db: Session, bot: Bot, ids: list[str] | None, group: str,
             form: FormState, exc: Refused) -> Response:
    """The group page again, with why the action was refused and what the staff member typed."""
    db.rollback()
    form.selected = parse_ids(ids)
    shown = parse_ids(group) or form.selected
    if not shown:  # nothing to show the form again with: the error page says why
        raise HTTPException(exc.status, str(exc))
    return render_group(request, staff, db, bot, shown, form, str(exc), exc.status)


def _act(request: Request, staff: Staff, db: Session, bot: Bot, ids: list[str] | None, group: str, form: FormState,
         action: str, target: str, detail: dict[str, Any], lang: str | None = None) -> Response | tuple[int, int]:
    """Run one action: (resolved, skipped) counts, or the group page saying why it was refused."""
    try:
        resolved, skipped = resolve(request, staff, db, bot, parse_ids(ids), action, target, detail, lang)
    except Refused as exc:
        return _refused(request, staff, db, bot, ids, group, form, exc)
    return len(resolved), len(skipped)


def _back(next_: str, **params: object) -> RedirectResponse:
    target = _safe_back(next_)
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}{urlencode(params)}", status_code=303)


def _lang(value: str, text: str) -> str:
    return value if value in ("vi", "en") else detect_language(text)


def _teach(request: Request, staff: Staff, db: Session, svc: Services, ids: list[str] | None, group: str,
           text: str, lang: str, target_id: str, next: str, action: str) -> Response:  # noqa: A002
    """Add the text as a phrasing of an entry (an answer, or an `oos.*` entry for out of scope)."""
    out_of_scope = action == "out_of_scope"
    form = FormState(text=text, lang=lang, next=next, **({"oos_id": target_id} if out_of_scope else {"entry_id": target_id}))
    try:
        clean = _clean_text(staff, text)
        target = _target_entry(staff, db, svc.bot, target_id, out_of_scope=out_of_scope)
    except Refused as exc:
        return _refused(request, staff, db, svc.bot, ids, group, form, exc)
    lang = _lang(lang, clean)
    done = _act(request, staff, db, svc.bot, ids, group, form, action, target,
                {"entry_id": target, "text": clean, "lang": lang}, lang)
    if isinstance(done, Response):
        return done
    return _back(next, done=action, n=done[0], skipped=done[1], entry=target)


@router.post("/admin/review/phrasing", include_in_schema=False)
def act_phrasing(
    request: Request, staff: EditorAction, db: DbSession, svc: ServicesDep, ids: FormIds = None,
    group: FormText = "", text: FormText = "", lang: FormText = "", entry_id: FormText = "",
    next: FormText = "/admin/review",
) -> Response:
    return _teach(request, staff, db, svc, ids, group, text, lang, entry_id, next, "phrasing")


@router.post("/admin/review/out-of-scope", include_in_schema=False)
def act_out_of_scope(
    request: Request, staff: EditorAction, db: DbSession, svc: ServicesDep, ids: FormIds = None,
    group: FormText = "", text: FormText = "", lang: FormText = "", oos_id: FormText = "",
    next: FormText = "/admin/review",
) -> Response:
    return _teach(request, staff, db, svc, ids, group, text, lang, oos_id, next, "out_of_scope")


@router.post("/admin/review/new-entry", include_in_schema=False)
def act_new_entry(
    request: Request, staff: EditorAction, db: DbSession, svc: ServicesDep, ids: FormIds = None,
    group: FormText = "", text: FormText = "", lang: FormText = "", next: FormText = "/admin/review",
) -> Response:
    form = FormState(text=text, lang=lang, next=next)
    try:
        clean = _clean_text(staff, text)
    except Refused as exc:
        return _refused(request, staff, db, svc.bot, ids, group, form, exc)
    lang = _lang(lang, clean)
    done = _act(request, staff, db, svc.bot, ids, group, form, "new_entry", "-", {"text": clean, "lang": lang})
    if isinstance(done, Response):
        return done
    return RedirectResponse("/admin/kb/new?" + urlencode({"question": clean, "lang": lang}), status_code=303)


@router.post("/admin/review/dismiss", include_in_schema=False)
def act_dismiss(
    request: Request, staff: EditorAction, db: DbSession, svc: ServicesDep, ids: FormIds = None,
    group: FormText = "", note: FormText = "", next: FormText = "/admin/review",
) -> Response:
    note = " ".join(note.split())[:500]
    form = FormState(note=note, next=next)
    done = _act(request, staff, db, svc.bot, ids, group, form, "dismissed", "-", {"note": note or None})
    if isinstance(done, Response):
        return done
    return _back(next, done="dismissed", n=done[0], skipped=done[1])
