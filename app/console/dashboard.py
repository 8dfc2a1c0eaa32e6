"""Console: the dashboard (figures for a period, a server-drawn SVG chart) and its CSV export."""
from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy.orm import Session

from app.console import stats
from app.console.deps import DbSession, ServicesDep, Viewer, audit, render, tr
from app.console.stats import DailyCounts, Figures, Period
from app.privacy import mask_pii
from knowledge.schema import REGIME_NAMES, Entry, Regime

router = APIRouter()
DEFAULT_DAYS = 30
QUICK_DAYS = (7, 30, 90)
Tr = Callable[[str, str], str]

CHANNEL_COLORS = {"web": "#0b5aa2", "messenger": "#7b3fe4", "zalo": "#0a9396", "cli": "#8a8f98"}
OTHER_COLORS = ("#ca6702", "#ae2012", "#005f73", "#94d2bd")
DECISION_COLORS = {"faq": "#2b8a3e", "clarify": "#f08c00", "fallback": "#c92a2a", "handover": "#7b3fe4",
                   "smalltalk": "#74c0fc", "out_of_scope": "#868e96"}
DECISION_LABELS = {
    "faq": ("Đã trả lời", "Answered"), "clarify": ("Hỏi lại để làm rõ", "Clarified"),
    "fallback": ("Chưa hiểu", "Fallback"), "handover": ("Chuyển cán bộ", "Handover"),
    "smalltalk": ("Giao tiếp xã giao", "Small talk"), "out_of_scope": ("Ngoài phạm vi", "Out of scope"),
}


# --- The period and channel asked for ----------------------------------------------------------


class BadFilter(ValueError):
    """A period or channel the dashboard cannot show (the message says why, in both languages)."""


def _parse_day(value: str, name: str) -> date | None:
    if not value.strip():
        return None
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise BadFilter(f"Ngày không hợp lệ / not a valid date ({name}): {value[:20]!r}") from None


def parse_period(start: str, end: str, days: str, channel: str, known_channels: list[str],
                 today: date | None = None) -> Period:
    """The period from the query (from/to dates, or the last `days` days; 30 days by default)."""
    today = today or stats.vn_today()
    channel = channel.strip()
    if channel and channel not in known_channels:
        raise BadFilter(f"Không có kênh này / no such channel: {channel[:20]!r}")
    first, last = _parse_day(start, "from"), _parse_day(end, "to")
    if first is None and last is None:
        try:
            n = int(days) if days.strip() else DEFAULT_DAYS
        except ValueError:
            raise BadFilter(f"Số ngày không hợp lệ / not a number of days: {days[:10]!r}") from None
        if not 1 <= n <= stats.MAX_DAYS:
            raise BadFilter(f"Số ngày phải từ 1 đến {stats.MAX_DAYS} / days must be 1 to {stats.MAX_DAYS}")
        return Period.last(n, channel or None, today)
    last = last or today
    first = first or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise BadFilter("Ngày bắt đầu sau ngày kết thúc / the start date is after the end date")
    if (last - first).days + 1 > stats.MAX_DAYS:
        raise BadFilter(f"Tối đa {stats.MAX_DAYS} ngày / at most {stats.MAX_DAYS} days")
    return Period(first, last, channel or None)


def period_query(period: Period, **extra: Any) -> str:
    """The query string that asks for this period again (for links and the CSV button)."""
    params: dict[str, Any] = {"from": period.start.isoformat(), "to": period.end.isoformat()}
    if period.channel:
        params["channel"] = period.channel
    return urlencode({**params, **extra})


# --- Labels in the staff member's language ------------------------------------------------------


def decision_label(kind: str, _: Tr) -> str:
    vi_en = DECISION_LABELS.get(kind)
    return _(*vi_en) if vi_en else kind


def regime_name(regime: str, lang: str) -> str:
    try:
        names = REGIME_NAMES[Regime(regime)]
    except (ValueError, KeyError):
        return regime  # a regime the current knowledge base no longer has
    return names.en if lang == "en" else names.vi


def entry_question(entries: Mapping[str, Entry], entry_id: str, lang: str) -> str | None:
    entry = entries.get(entry_id)
    if entry is None:
        return None  # deleted or renamed since
    return entry.question_en if lang == "en" else entry.question_vi


def pct(part: float | None) -> str:
    return "–" if part is None else f"{part * 100:.1f}%"


def ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


# --- The chart: stacked bars per day, drawn here as SVG geometry -------------------------------

CHART_W, CHART_H = 800, 260
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 44, 8, 10, 34


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    color: str
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Chart:
    width: int
    height: int
    plot: tuple[float, float, float, float]  # left, top, right, bottom
    bars: list[Bar]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    legend: list[tuple[str, str]]  # (channel, color)


def nice_step(peak: int, ticks: int = 4) -> int:
    """A round step (1, 2, 5 x 10^k) giving about `ticks` gridlines up to `peak`."""
    raw = max(peak, 1) / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    for m in (1, 2, 5, 10):
        if m * power >= raw:
            return max(int(m * power), 1)
    return int(10 * power)


def channel_colors(channels: list[str]) -> dict[str, str]:
    others = iter(OTHER_COLORS * 4)
    return {c: CHANNEL_COLORS.get(c) or next(others, "#495057") for c in channels}


def daily_chart(daily: DailyCounts) -> Chart:
    """Stacked bars, one per day, one segment per channel; the SVG scales with the page width."""
    left, top, right, bottom = PAD_LEFT, PAD_TOP, CHART_W - PAD_RIGHT, CHART_H - PAD_BOTTOM
    step = nice_step(daily.peak)
    y_max = max(step * math.ceil(max(daily.peak, 1) / step), step)
    scale = (bottom - top) / y_max
    slot = (right - left) / max(len(daily.days), 1)
    width = max(slot * 0.8, 0.5)
    colors = channel_colors(daily.channels)
    bars: list[Bar] = []
    for i, day in enumerate(daily.days):
        y = float(bottom)
        for channel in daily.channels:
            n = daily.count(day, channel)
            if n:
                h = n * scale
                y -= h
                bars.append(Bar(round(left + i * slot + (slot - width) / 2, 2), round(y, 2), round(width, 2),
                                round(h, 2), colors[channel], f"{day.strftime('%d/%m/%Y')} · {channel}: {n}"))
    y_ticks = [Tick(round(bottom - v * scale, 2), str(v)) for v in range(0, y_max + 1, step)]
    every = max(math.ceil(len(daily.days) / 10), 1)  # at most about ten dates under the axis
    x_ticks = [Tick(round(left + (i + 0.5) * slot, 2), d.strftime("%d/%m"))
               for i, d in enumerate(daily.days) if i % every == 0]
    return Chart(CHART_W, CHART_H, (left, top, right, bottom), bars, y_ticks, x_ticks, list(colors.items()))


@dataclass(frozen=True)
class Segment:
    key: str
    label: str
    count: int
    share: str
    x: float
    w: float
    color: str


def decision_segments(figures: Figures, _: Tr) -> list[Segment]:
    """One row per decision kind, with its place in a 100%-wide stacked bar (viewBox 0..1000)."""
    total, x, out = figures.decisions.total, 0.0, []
    for kind, n in figures.decisions.counts:
        w = 1000 * n / total if total else 0.0
        out.append(Segment(kind, decision_label(kind, _), n, pct(figures.decisions.share(kind)) if total else "–",
                           round(x, 2), round(w, 2), DECISION_COLORS.get(kind, "#495057")))
        x += w
    return out


# --- Routes ------------------------------------------------------------------------------------


def _period_or_error(db: Session, start: str, end: str, days: str, channel: str) -> tuple[Period, str | None]:
    """The asked-for period, or the default one with the reason the asked one was refused."""
    known = stats.channels(db)
    try:
        return parse_period(start, end, days, channel, known), None
    except BadFilter as exc:
        return Period.last(DEFAULT_DAYS), str(exc)


@router.get("/admin/dashboard", response_class=HTMLResponse, include_in_schema=False)
def dashboard(
    request: Request, staff: Viewer, db: DbSession, svc: ServicesDep,
    start: str = Query("", alias="from"), end: str = Query("", alias="to"), days: str = "", channel: str = "",
) -> Response:
    period, error = _period_or_error(db, start, end, days, channel)
    figures = stats.figures(db, period)
    _ = tr(staff.lang)
    entries = svc.bot.kb.by_id
    daily = figures.daily
    return render(request, "console/dashboard.html", {
        "flash": error, "flash_kind": "error", "period": period, "figures": figures, "daily": daily,
        "chart": daily_chart(daily), "segments": decision_segments(figures, _),
        "top": [(eid, entry_question(entries, eid, staff.lang), n) for eid, n in figures.top_entries],
        "regime_rows": [(r, regime_name(r, staff.lang), n) for r, n in figures.regimes],
        "channels": stats.channels(db), "quick_days": QUICK_DAYS, "query": period_query(period),
        "quick_channel": "&" + urlencode({"channel": period.channel}) if period.channel else "",
        "today": stats.vn_today(), "pct": pct, "ms": ms,
    })


def safe_cell(value: Any) -> Any:
    """A cell a spreadsheet will not run: a text starting with = + - @ (a citizen can type
    "=HYPERLINK(...)") gets a leading apostrophe, which Excel and LibreOffice show as text."""
    if isinstance(value, str) and value.startswith(("=", "+", "-", "@", "\t", "\r")):
        return "'" + value
    return value


def figures_csv(figures: Figures, entries: Mapping[str, Entry], lang: str) -> str:
    """The figures as CSV sections separated by a blank line (a title row, a header, the rows),
    UTF-8 with a BOM so that Excel reads the Vietnamese right. Citizens' text is masked."""
    _ = tr(lang)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    p, daily = figures.period, figures.daily

    def section(title: str, header: list[str], rows: list[list[Any]]) -> None:
        if out.tell():
            w.writerow([])
        w.writerow([title])
        w.writerow(header)
        w.writerows([safe_cell(v) for v in row] for row in rows)

    section(_("Khoảng thời gian", "Period"), [_("Từ ngày", "From"), _("Đến ngày", "To"), _("Kênh", "Channel")],
            [[p.start.isoformat(), p.end.isoformat(), p.channel or _("tất cả", "all")]])
    section(_("Tin nhắn của người dân mỗi ngày theo kênh (giờ Việt Nam)", "Citizens' messages per day by channel (Vietnam time)"),
            [_("Ngày", "Day"), *daily.channels, _("Tổng", "Total")],
            [[d.isoformat(), *(daily.count(d, c) for c in daily.channels), daily.day_total(d)] for d in daily.days]
            + [[_("Tổng", "Total"), *(daily.channel_total(c) for c in daily.channels), daily.total]])
    section(_("Quyết định của trợ lý", "Bot decisions"), [_("Loại", "Kind"), _("Tên", "Name"), _("Số trả lời", "Replies"), "%"],
            [[k, decision_label(k, _), n, f"{figures.decisions.share(k) * 100:.1f}"] for k, n in figures.decisions.counts])
    fb = figures.feedback
    section(_("Đánh giá", "Feedback"), [_("Hữu ích", "Thumbs up"), _("Không hữu ích", "Thumbs down"),
                                        _("Đã đánh giá", "Rated"), _("% hữu ích", "% helpful")],
            [[fb.up, fb.down, fb.rated, "" if fb.helpful_share is None else f"{fb.helpful_share * 100:.1f}"]])
    section(_("Mục được hỏi nhiều nhất", "Top entries"), ["#", _("Mã mục", "Entry id"), _("Câu hỏi", "Question"), _("Số lần", "Count")],
            [[i, eid, entry_question(entries, eid, lang) or "", n] for i, (eid, n) in enumerate(figures.top_entries, 1)])
    section(_("Theo chế độ", "By regime"), [_("Chế độ", "Regime"), _("Tên", "Name"), _("Số lần", "Count")],
            [[r, regime_name(r, lang), n] for r, n in figures.regimes])
    lat = figures.latency
    section(_("Thời gian phản hồi (ms)", "Response latency (ms)"), [_("Số trả lời", "Replies"), "p50", "p95", "max"],
            [[lat.count, ms(lat.p50) if lat.count else "", ms(lat.p95) if lat.count else "", ms(lat.max) if lat.count else ""]])
    section(_("Nhóm câu hỏi chưa xử lý lớn nhất", "Largest unanswered groups"),
            [_("Câu hỏi (đã che số cá nhân)", "Question (personal numbers masked)"), _("Số tin", "Count"), _("Kênh", "Channels")],
            [[mask_pii(g.text), g.count, " ".join(f"{c}:{n}" for c, n in g.channels.items())] for g in figures.groups])
    section(_("Hiện tại", "Now"), [_("Hội thoại do cán bộ xử lý", "Conversations with a person"),
                                   _("Mục chờ xem xét", "Open review items")],
            [[figures.taken_over, figures.open_items]])
    return "\ufeff" + out.getvalue()


@router.get("/admin/dashboard.csv", include_in_schema=False)
def dashboard_csv(
    request: Request, staff: Viewer, db: DbSession, svc: ServicesDep,
    start: str = Query("", alias="from"), end: str = Query("", alias="to"), days: str = "", channel: str = "",
) -> Response:
    try:
        period = parse_period(start, end, days, channel, stats.channels(db))
    except BadFilter as exc:
        raise HTTPException(422, str(exc)) from None
    figures = stats.figures(db, period)
    body = figures_csv(figures, svc.bot.kb.by_id, staff.lang)
    audit(db, staff, "export.figures", "dashboard", after={
        "from": period.start.isoformat(), "to": period.end.isoformat(), "channel": period.channel}, request=request)
    db.commit()
    name = f"vssbot-dashboard-{period.start.isoformat()}_{period.end.isoformat()}{'-' + period.channel if period.channel else ''}.csv"
    return Response(body.encode("utf-8"), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"})
