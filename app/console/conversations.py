"""Console: conversation search and transcripts, the handover inbox, staff replies, takeover and CSV export."""
from __future__ import annotations

import csv
import io
import unicodedata
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta, timezone
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.console.deps import AdminAction, DbSession, EditorAction, ServicesDep, Staff, Viewer, audit, render
from app.db.models import Conversation, Feedback, Message, Outbox, ReviewItem, as_utc, utcnow
from app.pipeline import SENDING_CHANNELS, clean_text
from app.privacy import PrivacyError, mask_pii, original_text
from knowledge.schema import REGIME_NAMES, Regime

router = APIRouter()

VN = timezone(timedelta(hours=7))  # staff read and pick dates in Vietnam time (Asia/Ho_Chi_Minh, no DST)
PAGE_SIZE = 50
INBOX_LIMIT = 300  # the handover inbox is a work list, not an archive
EXPORT_LIMIT = 100_000  # messages in one CSV: bounded, the export is built in memory
REPLY_MAX = 2000  # Messenger's and Zalo's limit for one text message
CHANNELS = ("web", "messenger", "zalo", "cli")
KINDS = ("faq", "clarify", "fallback", "handover", "smalltalk", "out_of_scope", "staff")
FEEDBACK = ("liked", "disliked", "any")
STATES = ("bot", "human")
DONE = {  # ?done=... after a redirect: a fixed message, so nothing typed in a URL is echoed on the page
    "take_over": ("Đã tiếp nhận: bot tạm dừng trong hội thoại này.", "Taken over: the bot is paused in this conversation."),
    "release": ("Đã trả hội thoại cho bot.", "Released: the bot answers this conversation again."),
    "reply": ("Đã xếp tin trả lời vào hàng gửi.", "Reply queued for sending."),
    "flagged": ("Đã đánh dấu câu trả lời để xem xét.", "Reply flagged for review."),
}


# --- Text search: case- and (for a query typed without them) diacritic-insensitive --------------------


def _fold_table() -> tuple[str, str]:
    """Accented Latin letters (all of Vietnamese, upper and lower case) and their bare lower-case letter.

    The same pair drives PostgreSQL's built-in translate() and Python's str.translate, so the
    database and the query are folded alike without the unaccent extension (no migration needed).
    """
    src, dst = ["Đ", "đ"], ["d", "d"]
    for cp in [*range(0xC0, 0x250), *range(0x1E00, 0x1F00)]:
        ch = chr(cp)
        base = unicodedata.normalize("NFD", ch)[0]
        if base != ch and base.isascii() and base.isalpha():
            src.append(ch)
            dst.append(base.lower())
    return "".join(src), "".join(dst)


FOLD_FROM, FOLD_TO = _fold_table()
# Combining marks (text typed as base letter + tone mark) are dropped: translate() deletes the
# characters of `from` that have no counterpart in `to`.
FOLD_DROP = "".join(chr(cp) for cp in range(0x300, 0x370))
_FOLD = str.maketrans(FOLD_FROM, FOLD_TO, FOLD_DROP)


def fold(text: str) -> str:
    """Lower case without diacritics: "Thai Sản" -> "thai san" (what the database side computes too)."""
    return (text or "").translate(_FOLD).lower()


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def text_condition(db: Session, query: str) -> ColumnElement[bool]:
    """Messages whose text contains `query`, ignoring case; a query without diacritics also matches
    text with them ("thai san" finds "thai sản"), one with diacritics matches them exactly."""
    query = unicodedata.normalize("NFC", query.strip())
    folded = fold(query) == query.lower()
    if db.get_bind().dialect.name == "sqlite":
        # SQLite's LIKE and lower() know only ASCII case: fold in Python, on this connection.
        raw = db.connection().connection.dbapi_connection
        raw.create_function("vss_fold", 1, fold, deterministic=True)  # type: ignore[union-attr]
        raw.create_function("vss_lower", 1, lambda s: unicodedata.normalize("NFC", s or "").lower(),  # type: ignore[union-attr]
                            deterministic=True)
        column = func.vss_fold(Message.text) if folded else func.vss_lower(Message.text)
        return column.like(_like_pattern(query.lower()), escape="\\")
    column = func.translate(Message.text, FOLD_FROM + FOLD_DROP, FOLD_TO) if folded else Message.text
    return column.ilike(_like_pattern(query), escape="\\")


# --- Filters -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    """The conversation search, as typed in the form (and carried in page and CSV links)."""

    channel: str = ""
    date_from: str = ""
    date_to: str = ""
    regime: str = ""
    kind: str = ""
    feedback: str = ""
    state: str = ""
    q: str = ""
    scope: str = ""  # "": search what people wrote; "all": the bot's and staff's replies too

    @classmethod
    def parse(cls, params: Any) -> tuple[Filters, list[str]]:
        """The filters from query parameters, and what was ignored as invalid (to say so)."""
        values = {f.name: str(params.get(f.name) or "").strip()[:200] for f in fields(cls)}
        allowed = {"channel": CHANNELS, "regime": tuple(r.value for r in Regime), "kind": KINDS,
                   "feedback": FEEDBACK, "state": STATES, "scope": ("all",)}
        errors = []
        for name, choices in allowed.items():
            if values[name] and values[name] not in choices:
                errors.append(f"{name}={values[name]}")
                values[name] = ""
        for name in ("date_from", "date_to"):
            if values[name] and _date(values[name]) is None:
                errors.append(f"{name}={values[name]}")
                values[name] = ""
        return cls(**values), errors

    def query_string(self, **extra: Any) -> str:
        items = {f.name: getattr(self, f.name) for f in fields(self)} | extra
        return urlencode({k: v for k, v in items.items() if v not in ("", None, 0)})

    def active(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))

    def start(self) -> datetime | None:
        d = _date(self.date_from)
        return datetime.combine(d, time(), VN).astimezone(timezone.utc) if d else None

    def end(self) -> datetime | None:
        """The end of the `date_to` day (exclusive), in Vietnam time."""
        d = _date(self.date_to)
        return datetime.combine(d + timedelta(days=1), time(), VN).astimezone(timezone.utc) if d else None


def _date(text: str) -> date | None:
    try:
        return date.fromisoformat(text)
    except ValueError:
        return None


def _in_conversation(*conds: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists().where(Message.conversation_id == Conversation.id, *conds)


def human_now(now: datetime) -> ColumnElement[bool]:
    """A person holds the conversation: the bot stays quiet until `paused_until`."""
    return and_(Conversation.state == "human", Conversation.paused_until.is_not(None), Conversation.paused_until > now)


def conditions(db: Session, f: Filters, now: datetime) -> list[ColumnElement[bool]]:
    """SQL conditions on Conversation for the filters (each a plain column test or an EXISTS)."""
    conds: list[ColumnElement[bool]] = []
    if f.channel:
        conds.append(Conversation.channel == f.channel)
    if (start := f.start()) is not None:
        conds.append(Conversation.last_message_at >= start)  # active at some time in the period
    if (end := f.end()) is not None:
        conds.append(Conversation.started_at < end)
    if f.regime:
        conds.append(_in_conversation(Message.direction == "out", Message.regime == f.regime))
    if f.kind:
        conds.append(_in_conversation(Message.direction == "out", Message.kind == f.kind))
    if f.feedback:
        rated = select(Feedback.id).join(Message, Feedback.message_id == Message.id).where(
            Message.conversation_id == Conversation.id)
        if f.feedback != "any":
            rated = rated.where(Feedback.helpful.is_(f.feedback == "liked"))
        conds.append(rated.exists())
    if f.state == "human":
        conds.append(human_now(now))
    elif f.state == "bot":
        conds.append(~human_now(now))
    if f.q:
        # By default people's own words: every fallback reply lists all the topics, so searching
        # the bot's text too would find "thai sản" in nearly every conversation.
        scope = () if f.scope == "all" else (_citizen(),)
        conds.append(_in_conversation(text_condition(db, f.q), *scope))
    return conds


# --- Reply windows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Whether (and how, and for how long) the platform lets staff answer the person now."""

    rule: str  # standard | human_agent | free | billable | closed | no_channel | no_message
    remaining: timedelta | None = None
    tag: str | None = None  # the message tag a reply needs (Messenger HUMAN_AGENT)
    closes_at: datetime | None = None

    @property
    def open(self) -> bool:
        return self.rule in ("standard", "human_agent", "free", "billable")


MESSENGER_STANDARD = timedelta(hours=24)
ZALO_FREE = timedelta(hours=48)
LAST_CHANCE = timedelta(days=7)  # Messenger HUMAN_AGENT tag; Zalo consultation messages (-230 after)


def reply_window(channel: str, last_inbound: datetime | None, now: datetime) -> Window:
    """The platform rule that applies to a staff reply now (../shared/reference/channels.md A7, B7).

    Messenger: any reply within 24 h of the person's last message, then until 7 days only a
    person's reply tagged HUMAN_AGENT. Zalo: free within 48 h, billed to the OA's quota until
    7 days, refused (-230) after. The web chat and the CLI cannot receive a staff reply at all.
    """
    if channel not in SENDING_CHANNELS:
        return Window("no_channel")
    if last_inbound is None:
        return Window("no_message")
    age = now - as_utc(last_inbound)
    first_limit, first_rule, later_rule, tag = (
        (MESSENGER_STANDARD, "standard", "human_agent", "HUMAN_AGENT") if channel == "messenger"
        else (ZALO_FREE, "free", "billable", None))
    if age < first_limit:
        return Window(first_rule, first_limit - age, None, as_utc(last_inbound) + first_limit)
    if age < LAST_CHANCE:
        return Window(later_rule, LAST_CHANCE - age, tag, as_utc(last_inbound) + LAST_CHANCE)
    return Window("closed", closes_at=as_utc(last_inbound) + LAST_CHANCE)


def window_text(window: Window, channel: str, lang: str) -> str:
    """The rule in words, for the inbox and the reply form."""
    en = lang == "en"
    left = _duration(window.remaining) if window.remaining is not None else ""
    texts = {
        "standard": (f"Trong khung 24 giờ của Messenger: còn {left}.",
                     f"Inside Messenger's 24-hour window: {left} left."),
        "human_agent": (f"Quá 24 giờ: chỉ cán bộ được trả lời, gửi kèm thẻ HUMAN_AGENT; còn {left} (tối đa 7 ngày).",
                        f"Past 24 hours: only a person may reply, sent with the HUMAN_AGENT tag; {left} left (7 days at most)."),
        "free": (f"Trong 48 giờ của Zalo (miễn phí): còn {left}.", f"Inside Zalo's 48 hours (free): {left} left."),
        "billable": (f"Quá 48 giờ: Zalo vẫn cho gửi nhưng tính phí vào hạn mức của OA; còn {left} (tối đa 7 ngày).",
                     f"Past 48 hours: Zalo still delivers but bills the OA's quota; {left} left (7 days at most)."),
        "closed": ("Đã hết hạn: quá 7 ngày từ tin nhắn cuối của người dân, nền tảng không cho gửi nữa"
                   + (" (Zalo báo lỗi -230)." if channel == "zalo" else "."),
                   "Expired: more than 7 days since the person's last message; the platform no longer allows a reply"
                   + (" (Zalo error -230)." if channel == "zalo" else ".")),
        "no_channel": ("Trang chat web không nhận được tin trả lời của cán bộ: chỉ tổng đài 1900 9068 có thể hỗ trợ.",
                       "The web chat page cannot receive a staff reply: only the hotline 1900 9068 can help.")
        if channel == "web" else ("Kênh này không gửi được tin trả lời của cán bộ.", "This channel cannot carry a staff reply."),
        "no_message": ("Người dân chưa nhắn tin nào: chưa thể trả lời.", "The person has not written yet: nothing to reply to."),
    }
    vi_text, en_text = texts[window.rule]
    return en_text if en else vi_text


def _duration(delta: timedelta) -> str:
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


def local(dt: datetime | None) -> str:
    """A time as staff read it: Vietnam time."""
    return as_utc(dt).astimezone(VN).strftime("%Y-%m-%d %H:%M") if dt else ""


# --- Conversation search -----------------------------------------------------------------------------


@dataclass
class Summary:
    conversation: Conversation
    messages: int = 0
    first_question: str = ""
    kinds: list[str] = field(default_factory=list)
    liked: int = 0
    disliked: int = 0
    human: bool = False


def _citizen() -> ColumnElement[bool]:
    """An inbound message a person wrote (not the echo of a staff member's message)."""
    return and_(Message.direction == "in", or_(Message.kind.is_(None), Message.kind != "echo"))


def summaries(db: Session, ids: list[int], now: datetime) -> list[Summary]:
    """One row per conversation of the page, in the order of `ids`, in four small grouped queries."""
    if not ids:
        return []
    convs = {c.id: c for c in db.scalars(select(Conversation).where(Conversation.id.in_(ids)))}
    rows = {i: Summary(convs[i]) for i in ids if i in convs}
    for cid, n in db.execute(select(Message.conversation_id, func.count()).where(
            Message.conversation_id.in_(ids)).group_by(Message.conversation_id)):
        rows[cid].messages = n
    ranked = select(Message.conversation_id, Message.text, func.row_number().over(
        partition_by=Message.conversation_id, order_by=(Message.created_at, Message.id)).label("n")).where(
        Message.conversation_id.in_(ids), _citizen()).subquery()
    for cid, text in db.execute(select(ranked.c.conversation_id, ranked.c.text).where(ranked.c.n == 1)):
        rows[cid].first_question = text
    for cid, kind in db.execute(select(Message.conversation_id, Message.kind).distinct().where(
            Message.conversation_id.in_(ids), Message.direction == "out", Message.kind.is_not(None))):
        rows[cid].kinds.append(kind)
    for cid, helpful, n in db.execute(
            select(Message.conversation_id, Feedback.helpful, func.count()).join(Feedback, Feedback.message_id == Message.id)
            .where(Message.conversation_id.in_(ids)).group_by(Message.conversation_id, Feedback.helpful)):
        if helpful:
            rows[cid].liked = n
        else:
            rows[cid].disliked = n
    for row in rows.values():
        row.kinds = sorted(row.kinds, key=lambda k: KINDS.index(k) if k in KINDS else len(KINDS))
        c = row.conversation
        row.human = c.state == "human" and c.paused_until is not None and as_utc(c.paused_until) > now
    return list(rows.values())


def _search_context(request: Request, db: Session, staff: Staff) -> dict[str, Any]:
    f, errors = Filters.parse(request.query_params)
    try:
        page = max(0, int(request.query_params.get("page") or 0))
    except ValueError:
        page = 0
    now = utcnow()
    conds = conditions(db, f, now)
    total = db.scalar(select(func.count()).select_from(Conversation).where(*conds)) or 0
    ids = list(db.scalars(select(Conversation.id).where(*conds).order_by(
        Conversation.last_message_at.desc(), Conversation.id.desc()).offset(page * PAGE_SIZE).limit(PAGE_SIZE + 1)))
    lang = staff.lang
    return {
        "filters": f, "rows": summaries(db, ids[:PAGE_SIZE], now), "more": len(ids) > PAGE_SIZE, "page": page,
        "total": total, "channels": CHANNELS, "kinds": KINDS, "states": STATES,
        "regimes": [(r.value, REGIME_NAMES[r].en if lang == "en" else REGIME_NAMES[r].vi) for r in Regime],
        "flash": ("Bỏ qua bộ lọc không hợp lệ / ignored invalid filters: " + ", ".join(errors)) if errors else None,
        "flash_kind": "error", "local": local,
    }


@router.get("/admin/conversations", response_class=HTMLResponse, include_in_schema=False)
def conversations_page(request: Request, staff: Viewer, db: DbSession) -> Response:
    return render(request, "console/conversations.html", _search_context(request, db, staff))


@router.get("/admin/conversations.csv", include_in_schema=False)
def conversations_csv(request: Request, staff: Viewer, db: DbSession) -> Response:
    """Every message of the matching conversations (within the date range, if one is set), masked."""
    f, _errors = Filters.parse(request.query_params)
    now = utcnow()
    matching = select(Conversation.id).where(*conditions(db, f, now))
    q = (select(Message, Feedback.helpful).outerjoin(Feedback, Feedback.message_id == Message.id)
         .where(Message.conversation_id.in_(matching))
         .order_by(Message.conversation_id.desc(), Message.created_at, Message.id).limit(EXPORT_LIMIT))
    if (start := f.start()) is not None:
        q = q.where(Message.created_at >= start)
    if (end := f.end()) is not None:
        q = q.where(Message.created_at < end)
    en = staff.lang == "en"
    out = io.StringIO()
    out.write("\ufeff")  # a BOM: Excel then reads the file as UTF-8 and shows Vietnamese correctly
    writer = csv.writer(out)
    writer.writerow(["conversation_id", "channel", "time (UTC+7)", "direction", "kind", "entry", "confidence",
                     "feedback", "text"] if en else
                    ["Mã hội thoại", "Kênh", "Thời gian (UTC+7)", "Chiều", "Loại", "Mục", "Độ tin cậy", "Phản hồi",
                     "Nội dung"])
    count = 0
    for message, helpful in db.execute(q):
        count += 1
        feedback = "" if helpful is None else ("liked" if helpful else "disliked")
        writer.writerow([message.conversation_id, message.channel, local(message.created_at), message.direction,
                         message.kind or "", message.entry_id or "",
                         "" if message.confidence is None else f"{message.confidence:.2f}", feedback,
                         _csv_safe(mask_pii(message.text))])
    audit(db, staff, "export.conversations", "conversations",
          after={"filters": {k: v for k, v in vars(f).items() if v}, "rows": count,
                 "truncated": count >= EXPORT_LIMIT}, request=request)
    db.commit()
    stamp = datetime.now(VN).strftime("%Y%m%d-%H%M")
    return Response(out.getvalue().encode("utf-8"), media_type="text/csv; charset=utf-8", headers={
        "Content-Disposition": f'attachment; filename="conversations-{stamp}.csv"', "Cache-Control": "no-store"})


def _csv_safe(text: str) -> str:
    # A cell starting with = + - @ is a formula to Excel: citizens' text must stay text.
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


# --- One conversation --------------------------------------------------------------------------------


def _conversation(db: Session, conversation_id: int) -> Conversation:
    conversation = db.get(Conversation, conversation_id)
    if conversation is None:
        raise HTTPException(404, "Không có hội thoại này / no such conversation")
    return conversation


def last_inbound(db: Session, conversation_id: int) -> Message | None:
    return db.scalar(select(Message).where(Message.conversation_id == conversation_id, _citizen())
                     .order_by(Message.created_at.desc(), Message.id.desc()).limit(1))


def _transcript_context(request: Request, db: Session, staff: Staff, conversation: Conversation,
                        flash: str | None = None, error: str | None = None, draft: str = "") -> dict[str, Any]:
    messages = list(db.scalars(select(Message).where(Message.conversation_id == conversation.id)
                               .order_by(Message.created_at, Message.direction, Message.id)))
    ids = [m.id for m in messages]
    feedback = {m: h for m, h in db.execute(select(Feedback.message_id, Feedback.helpful).where(
        Feedback.message_id.in_(ids)))} if ids else {}
    reviews = {r.message_id: r for r in db.scalars(select(ReviewItem).where(
        ReviewItem.conversation_id == conversation.id))}
    now = utcnow()
    last_in = next((m for m in reversed(messages) if m.direction == "in" and m.kind != "echo"), None)
    window = reply_window(conversation.channel, last_in.created_at if last_in else None, now)
    done = DONE.get(request.query_params.get("done", ""))
    if done and not flash:
        flash = done[1] if staff.lang == "en" else done[0]
    return {
        "conversation": conversation, "person": conversation.person, "messages": messages, "feedback": feedback,
        "reviews": reviews, "window": window, "window_text": window_text(window, conversation.channel, staff.lang),
        "human": conversation.state == "human" and conversation.paused_until is not None
        and as_utc(conversation.paused_until) > now,
        "has_originals": any(m.text_private for m in messages), "reveal": False, "originals": {},
        "reveal_errors": {}, "local": local, "reply_max": REPLY_MAX, "draft": draft,
        "flash": error or flash, "flash_kind": "error" if error else "ok",
    }


@router.get("/admin/conversations/{conversation_id}", response_class=HTMLResponse, include_in_schema=False)
def conversation_page(request: Request, conversation_id: int, staff: Viewer, db: DbSession) -> Response:
    conversation = _conversation(db, conversation_id)
    return render(request, "console/conversation.html", _transcript_context(request, db, staff, conversation))


@router.post("/admin/conversations/{conversation_id}/reveal", response_class=HTMLResponse, include_in_schema=False)
def conversation_reveal(request: Request, conversation_id: int, staff: AdminAction, db: DbSession,
                        svc: ServicesDep) -> Response:
    """The transcript with personal numbers shown, once: audited, and never kept by a cache.

    Inbound text is stored masked; the original exists only where the operator keeps originals
    (VSSBOT_STORE_ORIGINAL, encrypted with VSSBOT_DATA_KEY: app/privacy.py), and is decrypted here."""
    conversation = _conversation(db, conversation_id)
    ctx = _transcript_context(request, db, staff, conversation)
    originals, errors = {}, {}
    for message in ctx["messages"]:
        if message.text_private:
            try:
                originals[message.id] = original_text(message, svc.settings)
            except PrivacyError as exc:
                errors[message.id] = str(exc)
    ctx.update(reveal=True, originals=originals, reveal_errors=errors)
    audit(db, staff, "pii.reveal", f"conversation:{conversation.id}",
          after={"channel": conversation.channel, "revealed": sorted(originals), "failed": len(errors)},
          request=request)
    response = render(request, "console/conversation.html", ctx)  # rendered now, before the commit expires rows
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    db.commit()
    return response


def _state(conversation: Conversation) -> dict[str, Any]:
    until = conversation.paused_until
    return {"state": conversation.state, "paused_until": as_utc(until).isoformat() if until else None}


@router.post("/admin/conversations/{conversation_id}/take-over", include_in_schema=False)
def take_over(request: Request, conversation_id: int, staff: EditorAction, db: DbSession, svc: ServicesDep) -> Response:
    """A person answers from now on: the bot stays quiet for `handover_minutes` (or until released)."""
    conversation = _conversation(db, conversation_id)
    before = _state(conversation)
    _pause(conversation, svc.settings.handover_minutes)
    audit(db, staff, "conversation.take_over", f"conversation:{conversation.id}", before, _state(conversation), request)
    db.commit()
    return RedirectResponse(f"/admin/conversations/{conversation_id}?done=take_over", status_code=303)


def _pause(conversation: Conversation, minutes: int) -> None:
    """Pause the bot for `minutes` from now (never shortening a longer pause already running)."""
    until = utcnow() + timedelta(minutes=minutes)
    current = as_utc(conversation.paused_until) if conversation.paused_until else None
    conversation.state = "human"
    conversation.paused_until = max(until, current) if current else until


@router.post("/admin/conversations/{conversation_id}/release", include_in_schema=False)
def release(request: Request, conversation_id: int, staff: EditorAction, db: DbSession, svc: ServicesDep,
            back: Annotated[str, Form()] = "") -> Response:
    """Hand the conversation back to the bot; its open handover requests count as dealt with."""
    conversation = _conversation(db, conversation_id)
    before = _state(conversation)
    db.rollback()  # the pipeline releases in its own transaction: read its result fresh below
    svc.pipeline.release(conversation_id)
    conversation = _conversation(db, conversation_id)
    handled = list(db.scalars(select(ReviewItem).where(
        ReviewItem.conversation_id == conversation_id, ReviewItem.reason == "handover", ReviewItem.status == "open")))
    for item in handled:  # otherwise the handover inbox would keep listing it
        item.status, item.action, item.resolved_by, item.resolved_at = "resolved", "dismissed", staff.username, utcnow()
        item.detail = {"note": "conversation released to the bot"}
    audit(db, staff, "conversation.release", f"conversation:{conversation_id}", before,
          {**_state(conversation), "handover_items_resolved": [i.id for i in handled]}, request)
    db.commit()
    if back == "handover":  # released from the inbox: stay on the work list
        return RedirectResponse("/admin/handover", status_code=303)
    return RedirectResponse(f"/admin/conversations/{conversation_id}?done=release", status_code=303)


@router.post("/admin/conversations/{conversation_id}/reply", response_class=HTMLResponse, include_in_schema=False)
def staff_reply(request: Request, conversation_id: int, staff: EditorAction, db: DbSession, svc: ServicesDep,
                text: Annotated[str, Form()] = "") -> Response:
    """Queue a staff member's reply for the person's channel (the outbox dispatcher sends it)."""
    conversation = _conversation(db, conversation_id)
    text = clean_text(text, REPLY_MAX + 1).strip()

    def refuse(status: int, vi: str, en: str) -> Response:
        ctx = _transcript_context(request, db, staff, conversation, error=en if staff.lang == "en" else vi, draft=text)
        return render(request, "console/conversation.html", ctx, status_code=status)

    if not text or len(text) > REPLY_MAX:
        return refuse(422, f"Nội dung trả lời phải từ 1 đến {REPLY_MAX} ký tự.",
                      f"A reply must be 1 to {REPLY_MAX} characters long.")
    inbound = last_inbound(db, conversation_id)
    now = utcnow()
    window = reply_window(conversation.channel, inbound.created_at if inbound else None, now)
    if not window.open or inbound is None:
        vi_rule, en_rule = (window_text(window, conversation.channel, lang) for lang in ("vi", "en"))
        return refuse(409, "Không gửi được: " + vi_rule, "Not sent: " + en_rule)
    lang = inbound.lang or conversation.person.lang or "vi"
    message = Message(conversation_id=conversation.id, direction="out", channel=conversation.channel,
                      reply_to_id=inbound.id, text=text, lang=lang, kind="staff", author=staff.username)
    db.add(message)
    db.flush()
    payload: dict[str, Any] = {"text": text, "options": [], "lang": lang}
    if window.tag:
        payload["tag"] = window.tag
    db.add(Outbox(message_id=message.id, channel=conversation.channel, recipient=conversation.person.external_id,
                  payload=payload))
    before = _state(conversation)
    _pause(conversation, svc.settings.handover_minutes)  # a person is answering: the bot keeps quiet
    conversation.last_message_at = now
    audit(db, staff, "conversation.reply", f"conversation:{conversation.id}", before,
          {**_state(conversation), "message_id": message.id, "rule": window.rule, "tag": window.tag,
           "chars": len(text)}, request)
    db.commit()
    return RedirectResponse(f"/admin/conversations/{conversation_id}?done=reply#m-{message.id}", status_code=303)


@router.post("/admin/messages/{message_id}/flag", include_in_schema=False)
def flag(request: Request, message_id: str, staff: EditorAction, db: DbSession) -> Response:
    """Put a bot reply in the review queue (or back in it) as "flagged"."""
    reply = db.get(Message, message_id)
    if reply is None or reply.direction != "out":
        raise HTTPException(404, "Không có câu trả lời này / no such reply")
    if reply.kind == "staff":
        raise HTTPException(409, "Chỉ đánh dấu được câu trả lời của bot / only the bot's replies can be flagged")
    for attempt in range(2):  # two staff flagging at once: the second insert fails; reopen instead
        try:
            before = _flag(db, reply, staff.username)
            audit(db, staff, "review.flag", f"message:{message_id}", before,
                  {"reason": "flagged", "status": "open"}, request)
            db.commit()
            break
        except IntegrityError:
            db.rollback()
            reply = db.get(Message, message_id)
            if attempt or reply is None:
                raise
    return RedirectResponse(f"/admin/conversations/{reply.conversation_id}?done=flagged#m-{message_id}",
                            status_code=303)


def _flag(db: Session, reply: Message, actor: str) -> dict[str, Any] | None:
    item = db.scalar(select(ReviewItem).where(ReviewItem.message_id == reply.id))
    if item is not None:
        before = {"reason": item.reason, "status": item.status, "action": item.action}
        item.reason, item.status, item.action, item.resolved_by, item.resolved_at = "flagged", "open", None, None, None
        item.detail = {**(item.detail or {}), "flagged_by": actor}
        return before
    question = db.get(Message, reply.reply_to_id) if reply.reply_to_id else None
    db.add(ReviewItem(message_id=reply.id, question_id=question.id if question else None,
                      conversation_id=reply.conversation_id, channel=reply.channel, reason="flagged",
                      text=question.text if question else reply.text, detail={"flagged_by": actor}))
    db.flush()
    return None


# --- The handover inbox ------------------------------------------------------------------------------


@dataclass
class Waiting:
    conversation: Conversation
    since: datetime
    last_message: Message | None
    window: Window
    window_text: str
    human: bool


@router.get("/admin/handover", response_class=HTMLResponse, include_in_schema=False)
def handover_page(request: Request, staff: Viewer, db: DbSession, svc: ServicesDep) -> Response:
    return render(request, "console/handover.html", {"rows": waiting(db, staff.lang, svc.settings.handover_minutes),
                                                     "local": local})


def waiting(db: Session, lang: str, handover_minutes: int) -> list[Waiting]:
    """Conversations waiting for a person, oldest request first: held by a person (the bot paused)
    or with an open handover request (e.g. on the web page, where the bot does not pause)."""
    now = utcnow()
    requested = dict(db.execute(
        select(ReviewItem.conversation_id, func.min(ReviewItem.created_at))
        .where(ReviewItem.reason == "handover", ReviewItem.status == "open").group_by(ReviewItem.conversation_id)
        .order_by(func.min(ReviewItem.created_at)).limit(INBOX_LIMIT)).all())
    held = set(db.scalars(select(Conversation.id).where(human_now(now)).order_by(Conversation.paused_until)
                          .limit(INBOX_LIMIT)))
    ids = list(held | set(requested))
    if not ids:
        return []
    asked = dict(db.execute(select(Message.conversation_id, func.max(Message.created_at)).where(
        Message.conversation_id.in_(ids), Message.direction == "out", Message.kind == "handover")
        .group_by(Message.conversation_id)).all())
    last_in = {}
    ranked = select(Message.id, Message.conversation_id, func.row_number().over(
        partition_by=Message.conversation_id, order_by=(Message.created_at.desc(), Message.id.desc())).label("n")).where(
        Message.conversation_id.in_(ids), _citizen()).subquery()
    newest = select(ranked.c.id).where(ranked.c.n == 1)
    for message in db.scalars(select(Message).where(Message.id.in_(newest))):
        last_in[message.conversation_id] = message
    rows = []
    for conversation in db.scalars(select(Conversation).where(Conversation.id.in_(ids))):
        cid = conversation.id
        paused_at = (as_utc(conversation.paused_until) - timedelta(minutes=handover_minutes)
                     if conversation.paused_until else None)
        since = requested.get(cid) or asked.get(cid) or paused_at or conversation.last_message_at
        message = last_in.get(cid)
        window = reply_window(conversation.channel, message.created_at if message else None, now)
        rows.append(Waiting(conversation, as_utc(since), message, window,
                            window_text(window, conversation.channel, lang), cid in held))
    return sorted(rows, key=lambda r: (r.since, r.conversation.id))

