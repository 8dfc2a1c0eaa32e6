"""Console: the knowledge base: browse and search, edit entries and dated parameters as drafts,
check the drafts against the evaluation set and the self-test, publish, and versions (diff,
restore). Publishing reloads this process's bot at once and the others within a poll."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import kbstore
from app.console import drafts
from app.console.deps import DbSession, Editor, EditorAction, ServicesDep, Staff, Viewer, audit, render
from app.db.models import KbDraft, KbVersion
from app.services import Services
from intents.normalize import fold
from knowledge.loader import KnowledgeBase, KnowledgeError
from knowledge.render import render_answer
from knowledge.schema import ID_PATTERN, REGIME_NAMES, Parameter, ParameterValue, Regime

router = APIRouter()
PAGE = 50
VERSIONS_PAGE = 50
MAX_DIFF_LINES = 4000
KINDS = ("faq", "smalltalk", "handover", "out_of_scope")


# --- Shared helpers ---------------------------------------------------------------------------------


_loaded: dict[int, KnowledgeBase] = {}


def live_state(db: Session, svc: Services) -> tuple[KbVersion | None, KnowledgeBase]:
    """The latest published version and its knowledge base (the bot's, when it serves it)."""
    row = kbstore.latest(db)
    if row is None or row.version == svc.bot.kb.version:
        return row, svc.bot.kb
    if row.id not in _loaded:
        _loaded.clear()  # keep one: only the live version is wanted here
        _loaded[row.id] = kbstore.version_kb(row)
    return row, _loaded[row.id]


def draft_count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(KbDraft)) or 0


def entry_drafts(db: Session) -> dict[str, KbDraft]:
    return {d.key: d for d in db.scalars(select(KbDraft).where(KbDraft.kind == "entry"))}


def page(request: Request, db: Session, template: str, ctx: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    """A knowledge-base page: with the count of pending drafts for the sub-navigation."""
    base = {"draft_count": draft_count(db), "regimes": list(Regime), "regime_names": REGIME_NAMES, "kinds": KINDS}
    return render(request, template, {**base, **ctx}, status_code=status_code)


def lines_of(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def items_of(text: str) -> list[str]:
    """Keywords or ids: one a line, or separated by commas."""
    return [x.strip() for x in re.split(r"[\n,]", text) if x.strip()]


def pydantic_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '-'}: {e['msg']}" for e in exc.errors())


# --- Browse and search ------------------------------------------------------------------------------


@dataclass
class Row:
    id: str
    kind: str
    regime: str | None
    question: str
    status: str  # "" | changed | new | deleted
    data: dict[str, Any]


def would_be_rows(kb: KnowledgeBase, pending: dict[str, KbDraft]) -> list[Row]:
    """Every entry as the next publish would have it, each marked with its draft status."""
    rows = []
    for e in kb.entries:
        d = pending.get(e.id)
        if d is None:
            rows.append(Row(e.id, e.kind, e.regime.value if e.regime else None, e.question_vi, "", kbstore.entry_dict(e)))
        elif d.data is None:
            rows.append(Row(e.id, e.kind, e.regime.value if e.regime else None, e.question_vi, "deleted", kbstore.entry_dict(e)))
        else:
            rows.append(_row(d.data, "changed"))
    rows.extend(_row(d.data, "new") for key, d in sorted(pending.items()) if key not in kb.by_id and d.data is not None)
    return rows


def _row(data: dict[str, Any], status: str) -> Row:
    questions = data.get("questions_vi") or [""]
    return Row(data["id"], data.get("kind") or "faq", data.get("regime"), questions[0], status, data)


def folded(text: str) -> str:
    return fold(text).casefold()


def matches(row: Row, words: list[str]) -> bool:
    """Every word of the search (without diacritics) appears in the entry's id, phrasings,
    keywords or answers: "thai san" finds "thai sản"."""
    if not words:
        return True
    d = row.data
    hay = folded(" ".join([row.id, *(d.get("questions_vi") or []), *(d.get("questions_en") or []),
                           *(d.get("keywords") or []), d.get("answer_vi") or "", d.get("answer_en") or ""]))
    return all(w in hay for w in words)


@router.get("/admin/kb", response_class=HTMLResponse, include_in_schema=False)
def browse(request: Request, staff: Viewer, db: DbSession, svc: ServicesDep, q: str = "", regime: str = "",
           kind: str = "", status: str = "", page_no: Annotated[int, Query(alias="page")] = 0) -> Response:
    live, kb = live_state(db, svc)
    rows = would_be_rows(kb, entry_drafts(db))
    words = folded(q).split()
    rows = [r for r in rows if (not regime or (r.regime or "-") == regime) and (not kind or r.kind == kind)
            and (not status or r.status == status or (status == "draft" and r.status)) and matches(r, words)]
    page_no = max(page_no, 0)
    shown = rows[page_no * PAGE:(page_no + 1) * PAGE]
    return page(request, db, "console/kb.html", {
        "rows": shown, "total": len(rows), "q": q, "regime": regime, "kind": kind, "status": status,
        "page_no": page_no, "more": len(rows) > (page_no + 1) * PAGE, "live": live, "kb": kb})


# --- One entry: read, edit, new, delete ---------------------------------------------------------------


class EntryForm(BaseModel):
    """The entry form as posted: lists one item a line."""

    model_config = ConfigDict(extra="ignore")

    id: str = ""
    kind: str = "faq"
    regime: str = ""
    questions_vi: str = ""
    questions_en: str = ""
    keywords: str = ""
    answer_vi: str = ""
    answer_en: str = ""
    legal_basis: str = ""
    checked: str = ""
    related: str = ""

    @classmethod
    def of(cls, data: dict[str, Any]) -> EntryForm:
        return cls(
            id=data.get("id") or "", kind=data.get("kind") or "faq", regime=data.get("regime") or "",
            questions_vi="\n".join(data.get("questions_vi") or []), questions_en="\n".join(data.get("questions_en") or []),
            keywords="\n".join(data.get("keywords") or []), answer_vi=data.get("answer_vi") or "",
            answer_en=data.get("answer_en") or "", legal_basis=data.get("legal_basis") or "",
            checked=data.get("checked") or "", related="\n".join(data.get("related") or []))

    def data(self, entry_id: str) -> dict[str, Any]:
        return {
            "id": entry_id, "kind": self.kind, "regime": self.regime or None,
            "questions_vi": lines_of(self.questions_vi), "questions_en": lines_of(self.questions_en),
            "keywords": items_of(self.keywords), "answer_vi": self.answer_vi.replace("\r\n", "\n").strip(),
            "answer_en": self.answer_en.replace("\r\n", "\n").strip() or None,
            "legal_basis": self.legal_basis.strip() or None, "checked": self.checked.strip() or None,
            "related": items_of(self.related),
        }


def check_entry(data: dict[str, Any]) -> str | None:
    """What is wrong with the entry on its own (the whole knowledge base is checked later)."""
    if not re.match(ID_PATTERN, data["id"] or ""):
        return "Mã mục chỉ gồm chữ thường, số, '.', '_' hoặc '-' (2-80 ký tự) / the id: lowercase letters, digits, '.', '_' or '-'"
    if data["kind"] not in KINDS:
        return f"loại không hợp lệ / unknown kind {data['kind']!r}"
    if data["kind"] == "faq" and not data["regime"]:
        return "Mục hỏi đáp cần một chế độ / a faq entry needs a regime"
    if data["kind"] != "faq" and data["regime"]:
        return "Chỉ mục hỏi đáp (faq) có chế độ / only a faq entry carries a regime"
    if data["kind"] == "faq" and not (data["legal_basis"] and data["checked"]):
        return "Mục hỏi đáp cần căn cứ pháp lý và ngày kiểm tra / a faq entry needs its legal basis and checked date"
    try:
        kbstore.entry_of(data)
    except ValidationError as exc:
        return pydantic_message(exc)
    return None


def preview(data: dict[str, Any], kb: KnowledgeBase) -> dict[str, str]:
    """The answers as the bot would say them today (amounts filled in from the live parameters)."""
    out = {}
    for lang in ("vi", "en"):
        text = data.get(f"answer_{lang}")
        if text:
            try:
                out[lang] = render_answer(text, kb.parameters, lang, date.today())
            except (KeyError, ValueError) as exc:
                out[lang] = f"({exc})"
    return out


def entry_problems(db: Session, kb: KnowledgeBase, entry_id: str) -> list[str]:
    """Problems the drafts would give the knowledge base that name this entry."""
    try:
        _, _, files = kbstore.draft_state(db, kb)
        kbstore.load(files)
    except KnowledgeError as exc:
        pattern = re.compile(rf"\b{re.escape(entry_id)}\b")
        return [str(p) for p in exc.problems if pattern.search(p.message)]
    except kbstore.PublishRefused:
        return []
    return []


def entry_page(request: Request, staff: Staff, db: Session, svc: Services, entry_id: str, form: EntryForm | None = None,
               error: str | None = None, flash: str | None = None, warnings: list[str] | None = None,
               status_code: int = 200) -> HTMLResponse:
    live, kb = live_state(db, svc)
    draft = drafts.draft_of(db, "entry", entry_id)
    live_entry = kb.by_id.get(entry_id)
    if live_entry is None and (draft is None or draft.data is None) and form is None:
        raise HTTPException(404, f"Không có mục {entry_id!r} / no entry {entry_id!r}")
    current = drafts.current_entry(db, kb, entry_id)
    shown = current if current is not None else (kbstore.entry_dict(live_entry) if live_entry else {})
    status = "" if draft is None else ("deleted" if draft.data is None else ("changed" if live_entry else "new"))
    return page(request, db, "console/kb_entry.html", {
        "entry_id": entry_id, "data": shown, "form": form or EntryForm.of(shown), "status": status, "draft": draft,
        "live_entry": live_entry, "preview": preview(shown, kb), "is_new": False, "live": live,
        "flash": error or flash, "flash_kind": "error" if error else "ok", "warnings": warnings or []},
        status_code=status_code)


@router.get("/admin/kb/entries/{entry_id}", response_class=HTMLResponse, include_in_schema=False)
def entry_view(request: Request, entry_id: str, staff: Viewer, db: DbSession, svc: ServicesDep,
               saved: int = 0) -> Response:
    warnings: list[str] = []
    flash = None
    if saved and staff.can("editor"):
        _, kb = live_state(db, svc)
        warnings = entry_problems(db, kb, entry_id)
        flash = "Đã lưu bản nháp / saved as a draft"
    return entry_page(request, staff, db, svc, entry_id, flash=flash, warnings=warnings)


def save_draft(request: Request, staff: Staff, db: Session, svc: Services, data: dict[str, Any]) -> None:
    live, kb = live_state(db, svc)
    before = drafts.current_entry(db, kb, data["id"])
    drafts.save_entry(db, data, staff.username, live.version if live else kb.version)
    audit(db, staff, "kb.draft.save", f"entry:{data['id']}", before, data, request)
    db.commit()


@router.post("/admin/kb/entries/{entry_id}", include_in_schema=False)
def entry_save(request: Request, entry_id: str, staff: EditorAction, db: DbSession, svc: ServicesDep,
               form: Annotated[EntryForm, Form()]) -> Response:
    _, kb = live_state(db, svc)
    if entry_id not in kb.by_id and drafts.draft_of(db, "entry", entry_id) is None:
        raise HTTPException(404, f"Không có mục {entry_id!r} / no entry {entry_id!r}")
    data = form.data(entry_id)
    error = check_entry(data)
    if error:
        return entry_page(request, staff, db, svc, entry_id, form=form, error=error, status_code=422)
    save_draft(request, staff, db, svc, data)
    return RedirectResponse(f"/admin/kb/entries/{entry_id}?saved=1", status_code=303)


@router.post("/admin/kb/entries/{entry_id}/delete", include_in_schema=False)
def entry_delete(request: Request, entry_id: str, staff: EditorAction, db: DbSession, svc: ServicesDep) -> Response:
    live, kb = live_state(db, svc)
    draft = drafts.draft_of(db, "entry", entry_id)
    before = drafts.current_entry(db, kb, entry_id)
    if before is None:
        raise HTTPException(404, f"Không có mục {entry_id!r} / no entry {entry_id!r}")
    if entry_id not in kb.by_id:
        assert draft is not None
        db.delete(draft)  # a new entry never published: deleting it is dropping its draft
    else:
        drafts.delete_entry(db, entry_id, staff.username, live.version if live else kb.version)
    audit(db, staff, "kb.draft.delete", f"entry:{entry_id}", before, None, request)
    db.commit()
    return RedirectResponse("/admin/kb/drafts", status_code=303)


def suggest_id(regime: str | None, kind: str, question: str, taken: set[str]) -> str:
    """A readable, unused id: `<regime>.<first words of the question>`."""
    prefix = regime or {"smalltalk": "smalltalk", "handover": "handover", "out_of_scope": "out_of_scope"}.get(kind, "general")
    words = re.sub(r"[^a-z0-9]+", " ", fold(question).lower()).split()
    slug = "-".join(words[:6])[:40].strip("-") or "new-entry"
    candidate, n = f"{prefix}.{slug}", 2
    while candidate in taken:
        candidate, n = f"{prefix}.{slug}-{n}", n + 1
    return candidate


def taken_ids(db: Session, kb: KnowledgeBase) -> set[str]:
    return set(kb.by_id) | {k for k, d in entry_drafts(db).items() if d.data is not None}


@router.get("/admin/kb/new", response_class=HTMLResponse, include_in_schema=False)
def entry_new(request: Request, staff: Editor, db: DbSession, svc: ServicesDep, question: str = "", lang: str = "",
              regime: str = "", kind: str = "faq") -> Response:
    _, kb = live_state(db, svc)
    question = " ".join(question.split())[:500]
    kind = kind if kind in KINDS else "faq"
    if not regime and question and kind == "faq":
        # the regime of the entry the bot thinks closest: usually right, and the editor can change it
        decision = svc.bot.matcher.decide(question)
        regime = next((c.entry.regime.value for c in decision.candidates if c.entry.regime), "")
    regime = regime if regime in Regime.__members__ else ""
    lang = lang if lang in ("vi", "en") else (svc.bot.matcher.language(question) if question else "vi")
    form = EntryForm(id=suggest_id(regime or None, kind, question, taken_ids(db, kb)), kind=kind, regime=regime,
                     questions_vi=question if lang == "vi" else "", questions_en=question if lang == "en" else "",
                     checked=date.today().isoformat())
    return new_page(request, db, form)


def new_page(request: Request, db: Session, form: EntryForm, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    return page(request, db, "console/kb_entry.html", {
        "entry_id": form.id, "data": {}, "form": form, "status": "", "draft": None, "live_entry": None,
        "preview": {}, "is_new": True, "live": None, "flash": error, "flash_kind": "error", "warnings": []},
        status_code=status_code)


@router.post("/admin/kb/new", include_in_schema=False)
def entry_create(request: Request, staff: EditorAction, db: DbSession, svc: ServicesDep,
                 form: Annotated[EntryForm, Form()]) -> Response:
    _, kb = live_state(db, svc)
    entry_id = form.id.strip().lower()
    form.id = entry_id
    data = form.data(entry_id)
    error = check_entry(data)
    if error is None and drafts.current_entry(db, kb, entry_id) is not None:
        error = f"Đã có mục {entry_id!r}: hãy chọn mã khác / {entry_id!r} exists: choose another id"
    if error:
        return new_page(request, db, form, error, status_code=422)
    save_draft(request, staff, db, svc, data)
    return RedirectResponse(f"/admin/kb/entries/{entry_id}?saved=1", status_code=303)


# --- Dated parameters ---------------------------------------------------------------------------------


def would_be_parameters(db: Session, kb: KnowledgeBase) -> list[tuple[Parameter, bool]]:
    """Every parameter as the next publish would have it, and whether a draft changes it."""
    pending = {d.key: d for d in db.scalars(select(KbDraft).where(KbDraft.kind == "parameter"))}
    out = []
    for pid, p in kb.parameters.items():
        d = pending.get(pid)
        out.append((Parameter.model_validate(d.data), True) if d is not None and d.data is not None else (p, False))
    return out


def parse_amount(text: str) -> float:
    """An amount as staff type it: 2530000, 2.530.000, 2,530,000 or 2530000.5."""
    t = text.strip().replace(" ", "").replace("\u00a0", "")
    if re.fullmatch(r"\d{1,3}([.,]\d{3})+", t):
        t = re.sub(r"[.,]", "", t)
    value = float(t.replace(",", "."))
    if not value > 0:
        raise ValueError("the amount must be more than 0")
    return value


def parameters_page(request: Request, db: Session, svc: Services, error: str | None = None, flash: str | None = None,
                    form: dict[str, str] | None = None, status_code: int = 200) -> HTMLResponse:
    _, kb = live_state(db, svc)
    today = date.today()
    return page(request, db, "console/kb_parameters.html", {
        "parameters": would_be_parameters(db, kb), "today": today, "form": form or {},
        "flash": error or flash, "flash_kind": "error" if error else "ok"}, status_code=status_code)


@router.get("/admin/kb/parameters", response_class=HTMLResponse, include_in_schema=False)
def parameters_view(request: Request, staff: Viewer, db: DbSession, svc: ServicesDep, saved: str = "") -> Response:
    return parameters_page(request, db, svc, flash=f"Đã lưu bản nháp: {saved} / saved as a draft" if saved else None)


@router.post("/admin/kb/parameters/{parameter_id}", include_in_schema=False)
def parameter_add_value(
    request: Request, parameter_id: str, staff: EditorAction, db: DbSession, svc: ServicesDep,
    value: Annotated[str, Form()] = "", effective_from: Annotated[str, Form()] = "", source: Annotated[str, Form()] = "",
) -> Response:
    live, kb = live_state(db, svc)
    param = next((p for p, _ in would_be_parameters(db, kb) if p.id == parameter_id), None)
    if param is None:
        raise HTTPException(404, f"Không có tham số {parameter_id!r} / no parameter {parameter_id!r}")
    form = {"parameter": parameter_id, "value": value, "effective_from": effective_from, "source": source}
    try:
        new_value = ParameterValue(value=parse_amount(value), effective_from=date.fromisoformat(effective_from.strip()),
                                   source=source.strip())
        if not new_value.source:
            raise ValueError("the source (decree, circular) is required")
    except (ValueError, ValidationError) as exc:
        message = pydantic_message(exc) if isinstance(exc, ValidationError) else str(exc)
        return parameters_page(request, db, svc, error=f"Giá trị không hợp lệ / invalid value: {message}", form=form,
                               status_code=422)
    if any(v.effective_from == new_value.effective_from for v in param.values):
        return parameters_page(request, db, svc, form=form, status_code=422, error=(
            f"{parameter_id} đã có giá trị từ ngày {new_value.effective_from.isoformat()} / "
            f"{parameter_id} already has a value from {new_value.effective_from.isoformat()}"))
    before = param.model_dump(mode="json")
    after = param.model_copy(update={"values": sorted([*param.values, new_value], key=lambda v: v.effective_from)})
    data = after.model_dump(mode="json")
    drafts.save_parameter(db, data, staff.username, live.version if live else kb.version)
    audit(db, staff, "kb.draft.parameter", f"parameter:{parameter_id}", before, data, request)
    db.commit()
    return RedirectResponse(f"/admin/kb/parameters?saved={parameter_id}", status_code=303)


# --- Pending drafts -----------------------------------------------------------------------------------


@dataclass
class DraftView:
    draft: KbDraft
    action: str  # changed | new | deleted
    diff: list[str]
    stale: bool  # made on a version that is no longer live


@router.get("/admin/kb/drafts", response_class=HTMLResponse, include_in_schema=False)
def drafts_view(request: Request, staff: Viewer, db: DbSession, svc: ServicesDep) -> Response:
    live, kb = live_state(db, svc)
    views = []
    for d in drafts.pending(db):
        ch = kbstore.Change(d.kind, d.key, d.data)
        before, after = kbstore.block_of(ch, kb)
        exists = d.key in (kb.parameters if d.kind == "parameter" else kb.by_id)
        action = "deleted" if d.data is None else ("changed" if exists else "new")
        stale = bool(live and d.base_version and d.base_version != live.version)
        views.append(DraftView(d, action, kbstore.text_diff(before, after, d.key), stale))
    return page(request, db, "console/kb_drafts.html", {"views": views, "live": live})


@router.post("/admin/kb/drafts/{draft_id}/discard", include_in_schema=False)
def draft_discard(request: Request, draft_id: int, staff: EditorAction, db: DbSession) -> Response:
    d = db.get(KbDraft, draft_id)
    if d is None:
        raise HTTPException(404, "Không có bản nháp này / no such draft")
    audit(db, staff, "kb.draft.discard", f"{d.kind}:{d.key}", d.data, None, request)
    db.delete(d)
    db.commit()
    return RedirectResponse("/admin/kb/drafts", status_code=303)


# --- Check and publish --------------------------------------------------------------------------------


def check_page(request: Request, db: Session, report: kbstore.CheckReport | None, error: str | None = None,
               problems: list[str] | None = None, note: str = "", status_code: int = 200) -> HTMLResponse:
    return page(request, db, "console/kb_check.html", {
        "report": report, "report_json": json.dumps(report.as_dict(), ensure_ascii=False) if report else "",
        "problems": problems or (report.problems if report else []), "note": note,
        "flash": error, "flash_kind": "error"}, status_code=status_code)


@router.get("/admin/kb/check", response_class=HTMLResponse, include_in_schema=False)
def check_view(request: Request, staff: Editor, db: DbSession) -> Response:
    return check_page(request, db, None)


@router.post("/admin/kb/check", response_class=HTMLResponse, include_in_schema=False)
def check_run(request: Request, staff: EditorAction, db: DbSession, svc: ServicesDep) -> Response:
    if not draft_count(db):
        return check_page(request, db, None, "Không có bản nháp nào để kiểm tra / there is no draft to check")
    svc.sync_kb()  # measure against the version that is live now, even if another process published it
    _, kb = live_state(db, svc)
    try:
        _, _, files = kbstore.draft_state(db, kb)
    except KnowledgeError as exc:
        report = kbstore.CheckReport(live_version=kb.version, problems=[str(p) for p in exc.problems])
        return check_page(request, db, report)
    db.rollback()  # the check takes a while: hold no transaction open meanwhile
    report = kbstore.run_check(svc.bot, files, svc.settings.eval_dir)
    return check_page(request, db, report)


def parse_report(text: str) -> dict[str, Any] | None:
    """The check's figures, sent back with the publish form; kept only if they read as a report."""
    try:
        data = json.loads(text)
        return kbstore.CheckReport.from_dict(data).as_dict() if isinstance(data, dict) else None
    except ValueError:  # bad JSON, or fields of the wrong type
        return None


def report_of(data: dict[str, Any] | None) -> kbstore.CheckReport | None:
    """A stored report, or None (none kept, or written by an older release in another shape)."""
    try:
        return kbstore.CheckReport.from_dict(data) if data else None
    except ValueError:
        return None


@router.post("/admin/kb/publish", include_in_schema=False)
def publish(request: Request, staff: EditorAction, db: DbSession, svc: ServicesDep,
            note: Annotated[str, Form()] = "", checked: Annotated[str, Form()] = "",
            report: Annotated[str, Form()] = "") -> Response:
    parsed = parse_report(report)
    restored = kbstore.CheckReport.from_dict(parsed) if parsed else None
    note = note.strip()
    if not note:
        return check_page(request, db, restored, "Hãy ghi chú nội dung thay đổi / a note saying what changed is required",
                          status_code=422)
    if not checked:
        return check_page(request, db, None, "Hãy chạy kiểm tra trước khi xuất bản / run the check first", status_code=409)
    svc.sync_kb()
    _, kb = live_state(db, svc)
    try:
        done = kbstore.publish_drafts(db, staff.username, note, checked, parsed, kb)
    except kbstore.PublishRefused as exc:
        db.rollback()
        return check_page(request, db, restored if not exc.problems else None,
                          f"Không xuất bản được / not published: {exc}", [str(p) for p in exc.problems], note,
                          status_code=409)
    audit(db, staff, "kb.publish", f"kb_version:{done.version.id}", {"version": done.before},
          kbstore.audit_after(done, note), request)
    db.commit()
    svc.adopt_kb(done.version.id, done.kb)  # this process at once; the others at their next poll
    return RedirectResponse(f"/admin/kb/versions/{done.version.id}?published=1", status_code=303)


# --- Versions -------------------------------------------------------------------------------------------


@router.get("/admin/kb/versions", response_class=HTMLResponse, include_in_schema=False)
def versions_view(request: Request, staff: Viewer, db: DbSession,
                  page_no: Annotated[int, Query(alias="page")] = 0) -> Response:
    page_no = max(page_no, 0)
    rows = list(db.scalars(select(KbVersion).order_by(KbVersion.id.desc())
                           .offset(page_no * VERSIONS_PAGE).limit(VERSIONS_PAGE + 1)))
    live_id = kbstore.latest_id(db)
    figures = {r.id: report_of(r.report) for r in rows}
    return page(request, db, "console/kb_versions.html", {
        "rows": rows[:VERSIONS_PAGE], "figures": figures, "live_id": live_id, "page_no": page_no,
        "more": len(rows) > VERSIONS_PAGE})


@router.get("/admin/kb/versions/{version_id}", response_class=HTMLResponse, include_in_schema=False)
def version_view(request: Request, version_id: int, staff: Viewer, db: DbSession, against: int | None = None,
                 published: int = 0, restored: int = 0) -> Response:
    row = db.get(KbVersion, version_id)
    if row is None:
        raise HTTPException(404, f"Không có phiên bản #{version_id} / no version #{version_id}")
    base = db.get(KbVersion, against) if against is not None else kbstore.previous(db, row)
    if against is not None and base is None:
        raise HTTPException(404, f"Không có phiên bản #{against} / no version #{against}")
    diffs = kbstore.diff_files(base.files, row.files) if base is not None else []
    shown, total = [], 0
    for fd in diffs:
        room = MAX_DIFF_LINES - total
        shown.append((fd, fd.lines[:max(room, 0)]))
        total += len(fd.lines)
    live_id = kbstore.latest_id(db)
    live = db.get(KbVersion, live_id) if live_id else None
    flash = ("Đã xuất bản: bot đang dùng phiên bản này / published: the bot now answers from this version" if published
             else "Đã khôi phục / restored" if restored else None)
    return page(request, db, "console/kb_version.html", {
        "row": row, "base": base, "diffs": shown, "truncated": total > MAX_DIFF_LINES, "live": live,
        "figures": report_of(row.report),
        "sizes": {name: len(text) for name, text in sorted(row.files.items())}, "flash": flash, "flash_kind": "ok"})


@router.post("/admin/kb/versions/{version_id}/restore", include_in_schema=False)
def version_restore(request: Request, version_id: int, staff: EditorAction, db: DbSession, svc: ServicesDep,
                    note: Annotated[str, Form()] = "") -> Response:
    svc.sync_kb()
    _, kb = live_state(db, svc)
    try:
        done = kbstore.restore(db, version_id, staff.username, note.strip() or None, kb)
    except LookupError:
        raise HTTPException(404, f"Không có phiên bản #{version_id} / no version #{version_id}") from None
    except kbstore.PublishRefused as exc:
        db.rollback()
        detail = "; ".join([str(exc), *(str(p) for p in exc.problems[:10])])
        raise HTTPException(409, f"Không khôi phục được / not restored: {detail}") from None
    audit(db, staff, "kb.restore", f"kb_version:{done.version.id}", {"version": done.before},
          kbstore.audit_after(done, done.version.note, restored_from=version_id), request)
    db.commit()
    svc.adopt_kb(done.version.id, done.kb)
    return RedirectResponse(f"/admin/kb/versions/{done.version.id}?restored=1", status_code=303)

