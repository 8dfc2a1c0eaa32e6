"""Per-sender rate limits: the token bucket itself, the public API's 429, and the webhooks'
store-but-do-not-answer with one polite notice; other senders are never affected."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from app.bot import Bot
from app.db.models import Message, Outbox
from app.outbox import RetryPolicy
from app.ratelimit import SLOW_DOWN, RateLimiter, retry_after_header
from app.services import Services, build_services
from app.settings import Settings
from tests.conftest import LiveServer, settle
from tests.test_channels import (  # the stand-in Graph and Zalo APIs (fixture `platform`), signed deliveries
    Platform, serving_channels, count, messenger_post, text_event, wait_for, zalo_post,
)


class Clock:
    """A clock the test moves by hand: the limiter's arithmetic, without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the limiter ---------------------------------------------------------------------------------


def test_a_burst_then_one_message_per_interval() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=6, burst=3, clock=clock)  # one every 10 s after a burst of 3
    assert [limiter.hit("a").allowed for _ in range(3)] == [True, True, True]
    refused = limiter.hit("a")
    assert not refused.allowed and refused.retry_after == pytest.approx(10)
    assert retry_after_header(refused.retry_after) == "10"
    clock.now += 4
    assert limiter.hit("a").retry_after == pytest.approx(6)  # a refusal costs nothing
    clock.now += 6
    assert limiter.hit("a").allowed and not limiter.hit("a").allowed
    assert limiter.hit("b").allowed  # another sender has its own bucket
    clock.now += 3600
    assert [limiter.hit("a").allowed for _ in range(4)] == [True, True, True, False]  # refilled to the burst, no more


def test_the_slow_down_notice_comes_once_a_window() -> None:
    clock = Clock()
    limiter = RateLimiter(per_minute=60, burst=1, notice_window=60, clock=clock)
    assert limiter.hit("a").allowed
    notices = []
    for _ in range(150):  # 75 s of a message every half second: half refused, one notice a minute
        decision = limiter.hit("a")
        notices.append(decision.notify)
        assert not (decision.allowed and decision.notify)
        clock.now += 0.5
    assert sum(notices) == 2 and notices[0]


def test_zero_disables_and_the_key_table_is_bounded() -> None:
    off = RateLimiter(per_minute=0, burst=1)
    assert not off.enabled and all(off.hit("a").allowed for _ in range(1000))
    clock = Clock()
    limiter = RateLimiter(per_minute=1, burst=1, max_keys=100, clock=clock)
    for i in range(1000):
        limiter.hit(f"sender-{i}")
    assert len(limiter) == 100
    assert not limiter.hit("sender-999").allowed  # the recent ones are kept


# --- the public API ------------------------------------------------------------------------------


@pytest.fixture
def make_server(database_url: str, bot: Bot) -> Iterator[Any]:
    """Start a live server with the given rate settings (one per test is enough)."""
    opened: list[tuple[LiveServer, Services]] = []

    def make(**settings: Any) -> tuple[LiveServer, Services]:
        services = build_services(Settings(database_url=database_url, **settings), bot=bot)
        live = LiveServer(services).__enter__()
        opened.append((live, services))
        return live, services

    yield make
    for live, services in opened:
        live.__exit__()
        services.close()


def ask(url: str, text: str, session: str | None = None) -> httpx.Response:
    body: dict[str, str] = {"text": text}
    if session:
        body["session_id"] = session
    return httpx.post(url + "/api/v1/ask", json=body, timeout=30)


def test_ask_over_the_limit_gets_a_polite_429_and_other_sessions_do_not(make_server) -> None:  # type: ignore[no-untyped-def]
    live, services = make_server(rate_per_minute=6, rate_burst=3)
    assert [ask(live.url, "tuổi nghỉ hưu của nam", "flood").status_code for _ in range(3)] == [200, 200, 200]
    r = ask(live.url, "tuổi nghỉ hưu của nam", "flood")
    assert r.status_code == 429
    assert 1 <= int(r.headers["retry-after"]) <= 10
    detail = r.json()["detail"]
    assert "vui lòng đợi" in detail and "please wait" in detail
    assert ask(live.url, "thẻ bhyt bị mất", "calm").status_code == 200  # another person: unaffected
    with services.sessions() as s:  # the refused question was not stored, nor answered
        texts = s.scalars(select(Message.text).where(Message.direction == "in", Message.channel == "web")).all()
    assert len(texts) == 4


def test_an_address_is_capped_whatever_session_ids_it_makes_up(make_server) -> None:  # type: ignore[no-untyped-def]
    live, _ = make_server(rate_per_minute=60, rate_burst=2, rate_per_address_minute=8)  # address: 4 at once
    codes = [ask(live.url, "bhxh tự nguyện", f"session-{i}").status_code for i in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429]
    feedback = httpx.post(live.url + "/api/v1/feedback", json={"message_id": "x", "helpful": True}, timeout=10)
    assert feedback.status_code == 429 and "retry-after" in feedback.headers
    assert httpx.get(live.url + "/healthz", timeout=10).status_code == 200  # probes are never limited


def test_without_a_session_the_address_is_the_sender(make_server) -> None:  # type: ignore[no-untyped-def]
    live, _ = make_server(rate_per_minute=6, rate_burst=2)
    assert [ask(live.url, "lương hưu").status_code for _ in range(3)] == [200, 200, 429]
    assert ask(live.url, "lương hưu", "with-a-session").status_code == 200


# --- the channels --------------------------------------------------------------------------------


@pytest.fixture
def channels(platform: Platform, database_url: str, bot: Bot) -> Iterator[tuple[LiveServer, Services]]:
    with serving_channels(platform, database_url, bot, RetryPolicy(base_delay=0.05, max_attempts=4),
                          rate_per_minute=6, rate_burst=3) as served:
        yield served


def outbox_texts(services: Services, recipient: str) -> list[str]:
    """The replies queued for one person, in order (queued in the delivery's own transaction)."""
    with services.sessions() as s:
        rows = s.scalars(select(Outbox).where(Outbox.recipient == recipient).order_by(Outbox.id)).all()
        return [row.payload["text"] for row in rows]


def test_a_messenger_flood_is_stored_answered_once_with_a_notice_and_others_unaffected(channels, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = channels
    flood = [text_event("flooder", f"m_f{i}", "tuổi nghỉ hưu của nam là bao nhiêu") for i in range(6)]
    r = messenger_post(live.url, [*flood, text_event("calm", "m_c1", "thẻ bhyt bị mất làm lại ở đâu")])
    assert r.status_code == 200 and r.json() == {"status": "EVENT_RECEIVED"}  # the platform is never refused
    settle(services)
    queued = outbox_texts(services, "flooder")
    assert len(queued) == 4 and queued[3] == SLOW_DOWN["vi"]  # three answers, then one polite notice
    assert len(outbox_texts(services, "calm")) == 1
    assert count(services, Message, Message.direction == "in", Message.external_id.like("m_f%")) == 6  # all stored
    # more from the flooder in the same window: stored, not answered, no second notice
    for i in range(6, 9):
        assert messenger_post(live.url, [text_event("flooder", f"m_f{i}", "alo alo")]).status_code == 200
    settle(services)
    assert len(outbox_texts(services, "flooder")) == 4
    assert count(services, Message, Message.direction == "in", Message.external_id.like("m_f%")) == 9
    sent = wait_for(lambda: len(platform.sent_to("flooder")) == 4 and platform.sent_to("flooder"), 15)
    notices = [m["message"] for m in sent or [] if m["message"]["text"] == SLOW_DOWN["vi"]]
    assert len(notices) == 1 and "quick_replies" not in notices[0]  # delivered, and offers no buttons
    with services.sessions() as s:
        kinds = s.scalars(select(Message.kind).where(Message.direction == "out", Message.channel == "messenger")
                          .order_by(Message.created_at)).all()
    assert kinds.count("ratelimit") == 1


def test_an_english_flood_gets_the_notice_in_english(channels) -> None:  # type: ignore[no-untyped-def]
    live, services = channels
    flood = [text_event("en-user", f"m_e{i}", "how much is the maternity benefit") for i in range(5)]
    assert messenger_post(live.url, flood).status_code == 200
    settle(services)
    queued = outbox_texts(services, "en-user")
    assert len(queued) == 4 and queued[-1] == SLOW_DOWN["en"]


def test_a_zalo_flood_gets_200_one_notice_and_others_unaffected(channels) -> None:  # type: ignore[no-untyped-def]
    live, services = channels
    codes = [zalo_post(live.url, "zflood", f"zf{i}", "đóng bhxh bao nhiêu năm thì được lương hưu").status_code
             for i in range(6)]
    assert codes == [200] * 6
    assert zalo_post(live.url, "zcalm", "zc1", "thẻ bhyt bị mất làm lại ở đâu").status_code == 200
    settle(services)
    queued = outbox_texts(services, "zflood")
    assert len(queued) == 4 and queued[3] == SLOW_DOWN["vi"]
    assert len(outbox_texts(services, "zcalm")) == 1
    assert count(services, Message, Message.direction == "in", Message.external_id.like("zf%")) == 6
