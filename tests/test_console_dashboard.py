"""Dashboard: figures for a period from messages sent through the pipeline (page, chart, tables,
CSV, filters, Vietnam-time days, roles, audit), and the stats functions on their own."""
from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from urllib.parse import quote

import pytest
from sqlalchemy import func, select, update

from app.console import stats
from app.console.dashboard import BadFilter, daily_chart, nice_step, parse_period, safe_cell
from app.console.stats import Period, vn_day, vn_today
from app.db.models import AuditLog, Conversation, Message, ReviewItem, utcnow
from app.pipeline import Handled
from app.services import Services
from tests.conftest import Console
from webhooks.base import InboundEvent

UTC = timezone.utc

# (name, channel, text, the decision the bundled knowledge base makes, the entry answered)
MIX = [
    ("w1", "web", "điều kiện hưởng trợ cấp thất nghiệp", "faq", "unemployment.eligibility"),
    ("w2", "web", "điều kiện hưởng trợ cấp thất nghiệp", "faq", "unemployment.eligibility"),
    ("w3", "web", "nghỉ ốm được bao nhiêu ngày", "faq", "sickness.max-days"),
    ("w4", "web", "mua vé máy bay", "fallback", None),
    ("w5", "web", "chế độ", "clarify", None),
    ("w6", "web", "gặp nhân viên", "handover", "handover.human"),
    ("w7", "web", "giá vàng hôm nay", "fallback", "oos.chitchat"),  # a declined topic: out of scope
    ("w8", "web", "tôi thích nấu ăn, số 0912345678", "fallback", None),  # a personal number, masked on the console
    ("m1", "messenger", "điều kiện hưởng trợ cấp thất nghiệp", "faq", "unemployment.eligibility"),
    ("m2", "messenger", "mức đóng bảo hiểm xã hội tự nguyện", "faq", "voluntary.minimum-contribution"),
    ("m3", "messenger", "gặp nhân viên", "handover", "handover.human"),  # Messenger: a person takes over
    ("m4", "messenger", "xin chào", "smalltalk", "smalltalk.greeting"),
]


def send(services: Services, name: str, channel: str, text: str) -> Handled:
    handled = services.pipeline.handle(InboundEvent(channel=channel, user_id=f"user-{name}", text=text, event_id=f"ev-{name}"))
    assert handled is not None and handled.reply_id is not None
    return handled


def move(services: Services, handled: Handled, when: datetime, review_item: bool = False) -> None:
    """Put a question and its reply (and its review item) at another moment."""
    with services.sessions() as db, db.begin():
        db.execute(update(Message).where(Message.id.in_([handled.inbound_id, handled.reply_id])).values(created_at=when))
        if review_item:
            db.execute(update(ReviewItem).where(ReviewItem.message_id == handled.reply_id).values(created_at=when))


@dataclass
class Seeded:
    today: date  # Vietnam's today
    early_day: date  # w3 moved to 10:00 UTC of this day: the same day in Vietnam
    late_day: date  # m2 moved to 20:00 UTC of the day before: this day in Vietnam
    old_day: date  # w4 moved 40 days back, out of the default 30-day period


def seed(services: Services) -> Seeded:
    """The mix through the pipeline, feedback on three answers, three pairs moved to other days."""
    sent = {}
    for name, channel, text, kind, entry in MIX:
        sent[name] = send(services, name, channel, text)
        with services.sessions() as db:
            reply = db.get(Message, sent[name].reply_id)
            assert reply is not None and (reply.kind, reply.entry_id) == (kind, entry), (name, reply.kind, reply.entry_id)
    assert services.pipeline.feedback(sent["w1"].reply_id or "", True)
    assert services.pipeline.feedback(sent["w2"].reply_id or "", True)
    assert services.pipeline.feedback(sent["w3"].reply_id or "", False)
    utc_today = utcnow().date()
    d = utc_today - timedelta(days=3)
    move(services, sent["w3"], datetime.combine(d, time(10, 0), UTC))
    move(services, sent["m2"], datetime.combine(d - timedelta(days=1), time(20, 0), UTC))
    old = utc_today - timedelta(days=40)
    move(services, sent["w4"], datetime.combine(old, time(10, 0), UTC), review_item=True)
    return Seeded(vn_today(), d, d, old)


def cell(html: str, key: str) -> str:
    match = re.search(rf'data-cell="{re.escape(key)}">([^<]*)<', html)
    assert match, key
    return match.group(1).strip()


def decision_row(html: str, kind: str) -> tuple[int, str]:
    match = re.search(rf'<tr data-kind="{kind}">.*?<td class="num">(\d+)</td><td class="num">([^<]*)</td>', html, re.S)
    assert match, kind
    return int(match.group(1)), match.group(2)


def csv_sections(body: bytes) -> dict[str, list[list[str]]]:
    """CSV sections by their title row: {title: [header, *rows]}."""
    assert body.startswith(b"\xef\xbb\xbf")  # UTF-8 with BOM, for Excel
    text = body.decode("utf-8-sig")
    out = {}
    for chunk in text.split("\r\n\r\n"):
        rows = list(csv.reader(io.StringIO(chunk)))
        out[rows[0][0]] = rows[1:]
    return out


# --- Through HTTP on the live server -----------------------------------------------------------


def test_dashboard_shows_the_figures_of_the_default_period(console: Console) -> None:
    s = seed(console.services)
    r = console.viewer.get("/admin/dashboard")
    assert r.status_code == 200
    html = r.text
    # per day by channel, in Vietnam time: 20:00 UTC counts on the next day
    assert s.late_day == s.early_day and cell(html, f"{s.today.isoformat()}/web") == "6"
    assert cell(html, f"{s.today.isoformat()}/messenger") == "3"
    assert cell(html, f"{s.late_day.isoformat()}/messenger") == "1"
    assert cell(html, f"{(s.late_day - timedelta(days=1)).isoformat()}/messenger") == "0"
    assert cell(html, f"{s.early_day.isoformat()}/web") == "1"
    assert cell(html, "total/total") == "11"  # the 40-day-old message is outside the period
    assert f'data-day="{s.old_day.isoformat()}"' not in html
    assert '<svg class="chart"' in html and html.count("<rect") >= 4  # the stacked bars, drawn server-side
    assert "<script src=\"http" not in html and "chart.js" not in html.lower()
    # decisions: 5 answered, 1 clarify, 1 fallback, 2 handover, 1 small talk, 1 declined (out of scope)
    assert decision_row(html, "faq") == (5, "45.5%")
    assert decision_row(html, "clarify") == (1, "9.1%")
    assert decision_row(html, "fallback") == (1, "9.1%")
    assert decision_row(html, "handover") == (2, "18.2%")
    assert decision_row(html, "smalltalk") == (1, "9.1%")
    assert decision_row(html, "out_of_scope") == (1, "9.1%")
    assert cell(html, "decisions/total") == "11"
    # feedback: 2 up, 1 down
    assert (cell(html, "feedback/up"), cell(html, "feedback/down"), cell(html, "feedback/share")) == ("2", "1", "66.7%")
    # top entry with its question in the staff language, regimes by name
    top = re.search(r'<tr data-entry="([^"]+)">.*?<td class="num">(\d+)</td>', html, re.S)
    assert top and top.groups() == ("unemployment.eligibility", "3")
    question = console.services.bot.kb.by_id["unemployment.eligibility"].question_vi
    assert question in html
    assert re.search(r'data-regime="unemployment"><th scope="row">Bảo hiểm thất nghiệp</th><td class="num">3<', html)
    assert re.search(r'data-regime="voluntary">.*?<td class="num">1<', html)
    # latency of the 11 replies
    assert cell(html, "latency/count") == "11"
    assert re.fullmatch(r"\d+\.\d ms", cell(html, "latency/p50")) and re.fullmatch(r"\d+\.\d ms", cell(html, "latency/max"))
    # the largest unanswered group: "gặp nhân viên" twice (web + messenger); citizens' numbers masked
    groups = re.findall(r'<tr class="group"><td><a href="/admin/review">([^<]*)</a></td><td class="num">(\d+)</td>', html)
    assert groups[0] == ("gặp nhân viên", "2")
    assert ("mua vé máy bay", "1") not in groups  # its item is older than the period
    assert "0912345678" not in html and "•••••••678" in html
    # now: one Messenger conversation with a person, 6 open review items (a declined out-of-scope topic is not one)
    assert re.search(r'id="kpi-takeover"><span class="value">1<', html)
    assert re.search(r'id="kpi-open"><span class="value">6<', html)


def test_period_and_channel_filters(console: Console) -> None:
    s = seed(console.services)
    old = s.old_day.isoformat()
    html = console.viewer.get(f"/admin/dashboard?from={old}&to={old}").text
    assert cell(html, "total/total") == "1" and cell(html, f"{old}/web") == "1"
    assert decision_row(html, "fallback") == (1, "100.0%") and decision_row(html, "faq") == (0, "0.0%")
    assert re.search(r'<tr class="group"><td><a href="/admin/review">mua vé máy bay</a></td><td class="num">1<', html)
    wide = console.viewer.get(f"/admin/dashboard?from={old}&to={s.today.isoformat()}").text
    assert cell(wide, "total/total") == "12"

    web = console.viewer.get("/admin/dashboard?channel=web").text
    assert cell(web, "total/total") == "7" and 'data-cell="total/messenger"' not in web
    assert decision_row(web, "faq") == (3, "42.9%") and decision_row(web, "smalltalk") == (0, "0.0%")
    assert (cell(web, "feedback/up"), cell(web, "feedback/down")) == ("2", "1")
    assert re.search(r'id="kpi-takeover"><span class="value">0<', web)
    messenger = console.viewer.get("/admin/dashboard?channel=messenger&days=7").text
    assert cell(messenger, "total/total") == "4" and cell(messenger, "feedback/share") == "–"
    assert re.search(r'id="kpi-takeover"><span class="value">1<', messenger)
    assert 'value="messenger" selected' in messenger
    # quick links keep the channel
    assert 'href="/admin/dashboard?days=7&amp;channel=messenger"' in messenger


def test_bad_filters_are_explained_and_the_default_period_shown(console: Console) -> None:
    seed(console.services)
    for query, message in (("from=2026-13-01", "not a valid date"), ("from=2026-11-20&to=2026-11-01", "after the end date"),
                           ("days=0", "days must be"), ("channel=telegram", "no such channel"),
                           ("from=2020-01-01&to=2026-01-01", "at most 366 days")):
        r = console.viewer.get(f"/admin/dashboard?{query}")
        assert r.status_code == 200 and 'class="flash error"' in r.text and message in r.text, query
        assert cell(r.text, "total/total") == "11", query  # the last 30 days instead
    r = console.viewer.get("/admin/dashboard.csv?from=yesterday")
    assert r.status_code == 422 and "not a valid date" in r.text


def test_csv_export_has_the_figures_and_is_audited(console: Console) -> None:
    s = seed(console.services)
    r = console.viewer.get("/admin/dashboard.csv?days=30")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    start = (s.today - timedelta(days=29)).isoformat()
    assert f'filename="vssbot-dashboard-{start}_{s.today.isoformat()}.csv"' in r.headers["content-disposition"]
    sec = csv_sections(r.content)
    assert sec["Khoảng thời gian"][1] == [start, s.today.isoformat(), "tất cả"]
    daily = sec["Tin nhắn của người dân mỗi ngày theo kênh (giờ Việt Nam)"]
    assert daily[0] == ["Ngày", "web", "messenger", "Tổng"] and len(daily) == 1 + 30 + 1
    by_day = {row[0]: row[1:] for row in daily[1:]}
    assert by_day[s.today.isoformat()] == ["6", "3", "9"]
    assert by_day[s.late_day.isoformat()] == ["1", "1", "2"]  # w3 at 10:00 UTC, m2 at 20:00 UTC the day before
    assert by_day["Tổng"] == ["7", "4", "11"]
    decisions = {row[0]: row[2:] for row in sec["Quyết định của trợ lý"][1:]}
    assert decisions == {"faq": ["5", "45.5"], "clarify": ["1", "9.1"], "fallback": ["1", "9.1"],
                         "handover": ["2", "18.2"], "smalltalk": ["1", "9.1"], "out_of_scope": ["1", "9.1"]}
    assert sec["Đánh giá"][1] == ["2", "1", "3", "66.7"]
    top = sec["Mục được hỏi nhiều nhất"]
    assert top[1][:2] == ["1", "unemployment.eligibility"] and top[1][3] == "3" and top[1][2]
    assert ["unemployment", "Bảo hiểm thất nghiệp", "3"] in sec["Theo chế độ"]
    latency = sec["Thời gian phản hồi (ms)"]
    assert latency[0] == ["Số trả lời", "p50", "p95", "max"] and latency[1][0] == "11"
    assert all(float(v) > 0 for v in latency[1][1:])
    groups = sec["Nhóm câu hỏi chưa xử lý lớn nhất"]
    assert groups[1][:2] == ["gặp nhân viên", "2"]
    assert "0912345678" not in r.text and any("•••••••678" in g[0] for g in groups[1:])
    assert sec["Hiện tại"][1] == ["1", "6"]

    with console.services.sessions() as db:
        row = db.scalars(select(AuditLog).where(AuditLog.action == "export.figures")).one()
        assert (row.actor, row.target) == ("viewer", "dashboard")
        assert row.after == {"from": start, "to": s.today.isoformat(), "channel": None}

    en = console.admin.get("/admin/dashboard.csv?channel=web&lang=en")
    sec = csv_sections(en.content)
    assert sec["Period"][1][2] == "web" and sec["Citizens' messages per day by channel (Vietnam time)"][0] == ["Day", "web", "Total"]
    assert ["unemployment", "Unemployment insurance", "2"] in sec["By regime"]
    with console.services.sessions() as db:
        assert db.scalar(select(AuditLog.after).where(AuditLog.actor == "admin", AuditLog.action == "export.figures")) == {
            "from": start, "to": s.today.isoformat(), "channel": "web"}


def test_access_and_language(console: Console) -> None:
    seed(console.services)
    for path in ("/admin/dashboard", "/admin/dashboard.csv?days=7"):
        r = console.anon.get(path)
        assert r.status_code == 303 and r.headers["location"] == "/admin/login?next=" + quote(path)
        assert console.anon.http.get(path, headers={"accept": "application/json"}).status_code == 401
    with console.services.sessions() as db:
        assert db.scalar(select(func.count()).select_from(AuditLog).where(AuditLog.action == "export.figures")) == 0
    for client in (console.viewer, console.editor, console.admin):
        for path in ("/admin/dashboard", "/admin/dashboard.csv?days=7"):
            assert client.get(path).status_code == 200, path
    with console.services.sessions() as db:
        actors = db.scalars(select(AuditLog.actor).where(AuditLog.action == "export.figures").order_by(AuditLog.id)).all()
        assert actors == ["viewer", "editor", "admin"]
    en = console.viewer.get("/admin/dashboard?lang=en").text
    assert "Messages per day by channel" in en and "Unemployment insurance" in en
    assert console.services.bot.kb.by_id["unemployment.eligibility"].question_en in en
    vi = console.viewer.get("/admin/dashboard?lang=vi").text
    assert "Tin nhắn mỗi ngày theo kênh" in vi and "Bảo hiểm thất nghiệp" in vi


def test_an_empty_database_shows_an_empty_dashboard(console: Console) -> None:
    r = console.viewer.get("/admin/dashboard")
    assert r.status_code == 200
    assert "Không có tin nhắn nào trong khoảng thời gian này." in r.text
    assert cell(r.text, "total/total") == "0" and cell(r.text, "feedback/share") == "–"
    assert cell(r.text, "latency/p50") == "– ms"
    sec = csv_sections(console.viewer.get("/admin/dashboard.csv").content)
    assert sec["Thời gian phản hồi (ms)"][1] == ["0", "", "", ""]


# --- The stats functions on their own ----------------------------------------------------------


def test_days_are_vietnam_calendar_days() -> None:
    assert vn_day(datetime(2026, 11, 19, 16, 59, 59, tzinfo=UTC)) == date(2026, 11, 19)
    assert vn_day(datetime(2026, 11, 19, 17, 0, tzinfo=UTC)) == date(2026, 11, 20)
    assert vn_day(datetime(2026, 11, 19, 20, 0)) == date(2026, 11, 20)  # naive = UTC, as SQLite returns it
    p = Period(date(2026, 11, 20), date(2026, 11, 21))
    assert p.since == datetime(2026, 11, 19, 17, 0, tzinfo=UTC)
    assert p.until == datetime(2026, 11, 21, 17, 0, tzinfo=UTC)
    assert p.days == [date(2026, 11, 20), date(2026, 11, 21)]
    assert Period.last(7, today=date(2026, 11, 24)) == Period(date(2026, 11, 18), date(2026, 11, 24))


def test_nearest_rank_and_chart_scale() -> None:
    assert [stats.nearest_rank(p, 20) for p in (50, 95, 100)] == [9, 18, 19]
    assert stats.nearest_rank(50, 1) == 0 and stats.nearest_rank(95, 3) == 2
    assert [nice_step(n) for n in (0, 3, 9, 40, 130, 2600)] == [1, 1, 5, 10, 50, 1000]


def test_chart_bars_stack_per_day() -> None:
    days = [date(2026, 11, 1), date(2026, 11, 2)]
    daily = stats.DailyCounts(days, ["web", "zalo"], {(days[0], "web"): 3, (days[0], "zalo"): 1, (days[1], "web"): 2})
    chart = daily_chart(daily)
    assert len(chart.bars) == 3
    web0, zalo0, web1 = chart.bars
    bottom = chart.plot[3]
    assert web0.y + web0.h == pytest.approx(bottom) and zalo0.y + zalo0.h == pytest.approx(web0.y)  # stacked
    assert web0.h == pytest.approx(web1.h * 1.5) and web0.x == zalo0.x < web1.x
    assert all(chart.plot[1] - 0.01 <= b.y for b in chart.bars)  # within the plot
    assert chart.legend == [("web", "#0b5aa2"), ("zalo", "#0a9396")]


def test_csv_cells_cannot_be_formulas() -> None:
    assert [safe_cell(v) for v in ("=HYPERLINK(\"x\")", "+84 912", "-1", "@SUM(A1)", "bảo hiểm", 3, None)] == [
        "'=HYPERLINK(\"x\")", "'+84 912", "'-1", "'@SUM(A1)", "bảo hiểm", 3, None]


def test_parse_period() -> None:
    today = date(2026, 11, 24)
    known = ["web", "messenger"]
    assert parse_period("", "", "", "", known, today) == Period(date(2026, 10, 26), today)
    assert parse_period("", "", "90", "web", known, today) == Period(date(2026, 8, 27), today, "web")
    assert parse_period("2026-11-01", "", "", "", known, today) == Period(date(2026, 11, 1), today)
    assert parse_period("", "2026-11-10", "", "", known, today) == Period(date(2026, 10, 12), date(2026, 11, 10))
    for args in (("x", "", "", ""), ("", "", "abc", ""), ("", "", "400", ""), ("2026-11-02", "2026-11-01", "", ""),
                 ("", "", "", "fax")):
        with pytest.raises(BadFilter):
            parse_period(*args, known, today)


def test_stats_functions_on_both_databases(services: Services) -> None:
    """Counts, day buckets at the 17:00 UTC boundary, decisions, feedback, latency, takeover."""
    base = utcnow().date() - timedelta(days=5)
    day = base + timedelta(days=1)  # the Vietnam day that starts at 17:00 UTC on `base`
    handled = []
    for i in range(20):
        h = send(services, f"s{i}", "zalo" if i % 4 == 0 else "web", "điều kiện hưởng trợ cấp thất nghiệp")
        handled.append(h)
        with services.sessions() as db, db.begin():
            db.execute(update(Message).where(Message.id == h.reply_id).values(latency_ms=float(i + 1)))
    move(services, handled[0], datetime(base.year, base.month, base.day, 16, 59, 59, tzinfo=UTC))  # zalo, on `base`
    move(services, handled[4], datetime(base.year, base.month, base.day, 17, 0, tzinfo=UTC))  # zalo, on `day`
    move(services, handled[1], datetime(base.year, base.month, base.day, 23, 0, tzinfo=UTC))  # web, on `day`
    fallback = send(services, "f", "web", "mua vé máy bay")
    with services.sessions() as db, db.begin():
        db.execute(update(Message).where(Message.id == fallback.reply_id).values(latency_ms=None))
    takeover = send(services, "h", "zalo", "gặp nhân viên")
    with services.sessions() as db, db.begin():
        db.execute(update(Message).where(Message.id == takeover.reply_id).values(latency_ms=21.0))
    services.pipeline.feedback(handled[2].reply_id or "", False)
    services.pipeline.feedback(handled[3].reply_id or "", True)

    today = vn_today()
    period = Period(base, today)
    with services.sessions() as db:
        daily = stats.messages_per_day(db, period)
        assert daily.channels == ["web", "zalo"]
        assert (daily.count(base, "zalo"), daily.count(day, "zalo"), daily.count(day, "web")) == (1, 1, 1)
        assert daily.count(today, "web") == 14 + 1 and daily.count(today, "zalo") == 3 + 1
        assert daily.total == 22 and daily.day_total(day) == 2 and daily.channel_total("zalo") == 6
        assert len(daily.days) == (today - base).days + 1

        only_day = stats.messages_per_day(db, Period(day, day))
        assert only_day.total == 2 and only_day.days == [day]
        assert stats.messages_per_day(db, Period(day, day, "zalo")).total == 1

        d = stats.decisions(db, period)
        assert (d.count("faq"), d.count("fallback"), d.count("handover"), d.total) == (20, 1, 1, 22)
        assert d.share("faq") == pytest.approx(20 / 22)
        assert [k for k, _ in d.counts] == list(stats.DECISION_KINDS)

        f = stats.feedback(db, period)
        assert (f.up, f.down, f.helpful_share) == (1, 1, 0.5)
        assert stats.feedback(db, Period(day, day)).helpful_share is None

        assert stats.top_entries(db, period) == [("unemployment.eligibility", 20)]
        assert stats.top_entries(db, Period(today, today, "zalo")) == [("unemployment.eligibility", 3)]
        assert stats.regimes(db, period) == [("unemployment", 20)]

        lat = stats.latency(db, period)  # 1..21 ms; the fallback's latency is unknown: not counted
        assert (lat.count, lat.p50, lat.p95, lat.max) == (21, 11.0, 20.0, 21.0)
        assert stats.latency(db, Period(day - timedelta(days=30), day - timedelta(days=20))) == stats.LatencyFigures(0, None, None, None)

        assert stats.taken_over(db) == 1 and stats.taken_over(db, "web") == 0
        conv = db.get(Conversation, takeover.conversation_id)
        assert conv is not None and conv.state == "human" and conv.paused_until is not None
        assert stats.taken_over(db, now=conv.paused_until + timedelta(seconds=1)) == 0  # the pause ran out

        groups = stats.unanswered_groups(db, period)
        assert sorted((g.text, g.count) for g in groups) == [
            ("gặp nhân viên", 1), ("mua vé máy bay", 1), ("điều kiện hưởng trợ cấp thất nghiệp", 1)]
        assert stats.unanswered_groups(db, period, limit=1)[0].count == 1
        assert stats.unanswered_groups(db, Period(today, today, "zalo"))[0].text == "gặp nhân viên"
        assert stats.open_review_items(db) == 3 and stats.open_review_items(db, "zalo") == 1  # + the thumbs-down
        assert stats.channels(db)[:4] == ["web", "messenger", "zalo", "cli"]
