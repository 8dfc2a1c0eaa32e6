"""Messenger and Zalo end to end: signed deliveries into a real server, replies out through the
outbox to a real HTTP server on loopback standing in for the Graph API and the Zalo APIs."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from app.bot import Bot
from app.db.models import ChannelToken, Conversation, Feedback, Message, Outbox
from app.outbox import RetryPolicy
from app.services import Services, build_services
from app.settings import Settings
from tests.conftest import LiveServer

APP_SECRET, VERIFY, PAGE_TOKEN, PAGE_ID = "app-secret", "verify-me", "page-token", "1029384756"
ZALO_APP, ZALO_SECRET, OA_SECRET, OA_ID = "3608465248940903967", "zalo-app-secret", "oa-secret", "388613280878808645"


class Platform:
    """The stand-in Graph API and Zalo APIs: records what they receive, fails on demand."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.graph: list[dict[str, Any]] = []
        self.zalo: list[dict[str, Any]] = []
        self.oauth: list[dict[str, str]] = []
        self.fail_next: list[tuple[int, dict[str, Any]]] = []  # (status, body) answers to give first
        self.zalo_token = "zalo-access-new"
        self.profile: list[dict[str, Any]] = []
        self.oauth_delay = 0.0
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, code: int, obj: dict[str, Any]) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802
                url = urllib.parse.urlparse(self.path)
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if url.path == "/oauth/v4/oa/access_token" and platform.oauth_delay:
                    time.sleep(platform.oauth_delay)  # a slow refresh: the window a race needs
                with platform.lock:
                    if url.path == "/graph/me/messenger_profile":
                        platform.profile.append({"token": urllib.parse.parse_qs(url.query).get("access_token"), "body": json.loads(raw)})
                        return self._json(200, {"result": "success"})
                    if url.path == "/graph/me/messages":
                        if platform.fail_next:
                            return self._json(*platform.fail_next.pop(0))
                        platform.graph.append(json.loads(raw))
                        return self._json(200, {"recipient_id": "x", "message_id": f"m_sent_{len(platform.graph)}"})
                    if url.path == "/zalo/v3.0/oa/message/cs":
                        if self.headers.get("access_token") != platform.zalo_token:
                            return self._json(200, {"error": -216, "message": "Access token is invalid"})
                        platform.zalo.append(json.loads(raw))
                        return self._json(200, {"error": 0, "data": {"message_id": f"z_{len(platform.zalo)}"}})
                    if url.path == "/oauth/v4/oa/access_token":
                        form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
                        platform.oauth.append({"secret_key": self.headers.get("secret_key") or "", **form})
                        return self._json(200, {"access_token": platform.zalo_token, "refresh_token": "refresh-2",
                                                "expires_in": "90000"})
                return self._json(404, {"error": "unknown"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sent_to(self, psid: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.graph if m["recipient"]["id"] == psid]


def wait_for(pred: Callable[[], Any], seconds: float = 10) -> Any:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    return pred()


def channel_settings(platform: Platform, database_url: str, **overrides: Any) -> Settings:
    """Both channels on, against the stand-in APIs of `platform`."""
    return Settings(
        database_url=database_url, messenger_verify_token=VERIFY, messenger_app_secret=APP_SECRET,
        messenger_page_token=PAGE_TOKEN, messenger_api_base=platform.url + "/graph",
        zalo_app_id=ZALO_APP, zalo_app_secret=ZALO_SECRET, zalo_oa_secret=OA_SECRET,
        zalo_access_token="zalo-access-old", zalo_refresh_token="refresh-1",
        zalo_api_base=platform.url + "/zalo", zalo_oauth_base=platform.url + "/oauth", dispatch_interval=0.05,
        **overrides,
    )


@contextmanager
def serving_channels(platform: Platform, database_url: str, bot: Bot, policy: RetryPolicy,
                     **overrides: Any) -> Iterator[tuple[LiveServer, Services]]:
    """A live server with both channels on against `platform`, its dispatcher retrying by `policy`."""
    services = build_services(channel_settings(platform, database_url, **overrides), bot=bot)
    assert services.dispatcher is not None
    services.dispatcher.policy = policy
    try:
        with LiveServer(services) as live:
            yield live, services
    finally:
        services.close()


@pytest.fixture
def server(platform: Platform, database_url: str, bot: Bot) -> Iterator[tuple[LiveServer, Services]]:
    with serving_channels(platform, database_url, bot, RetryPolicy(base_delay=0.05, max_attempts=4)) as served:
        yield served


def messenger_post(url: str, messaging: list[dict[str, Any]], secret: str = APP_SECRET) -> httpx.Response:
    body = {"object": "page", "entry": [{"id": PAGE_ID, "time": 1, "messaging": [m]} for m in messaging]}
    raw = json.dumps(body, ensure_ascii=True, separators=(",", ":")).encode()
    sig = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return httpx.post(url + "/webhooks/messenger", content=raw, headers={"X-Hub-Signature-256": sig,
                                                                          "Content-Type": "application/json"})


def text_event(psid: str, mid: str, text: str) -> dict[str, Any]:
    return {"sender": {"id": psid}, "recipient": {"id": PAGE_ID}, "timestamp": 1732500000000,
            "message": {"mid": mid, "text": text}}


def count(services: Services, model: Any, *where: Any) -> int:
    with services.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_messenger_text_is_answered_once_through_the_send_api(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = server
    assert messenger_post(live.url, [text_event("u1", "m_1", "nghỉ thai sản được mấy tháng")]).status_code == 200
    sent = wait_for(lambda: platform.sent_to("u1"))
    msg = sent[0]
    assert msg["messaging_type"] == "RESPONSE" and 0 < len(msg["message"]["text"]) <= 2000
    qrs = msg["message"]["quick_replies"]
    assert 0 < len(qrs) <= 13 and all(len(q["title"]) <= 20 for q in qrs)
    assert any(q["payload"].startswith("FEEDBACK:up:") for q in qrs)
    # a retry of the same delivery, and two copies at the same moment: still one reply
    with ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda _: messenger_post(live.url, [text_event("u1", "m_1", "nghỉ thai sản được mấy tháng")]).status_code, range(3)))
    assert codes == [200, 200, 200]
    time.sleep(0.5)
    assert len(platform.sent_to("u1")) == 1
    assert wait_for(lambda: count(services, Outbox, Outbox.status == "sent") == 1)


def test_bad_signature_is_refused_and_nothing_is_stored(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = server
    assert messenger_post(live.url, [text_event("u2", "m_2", "xin chào")], secret="wrong").status_code == 403
    raw = b'{"object":"page","entry":[]}'
    assert httpx.post(live.url + "/webhooks/messenger", content=raw).status_code == 403
    assert httpx.post(live.url + "/webhooks/messenger", content=b"{not json",
                      headers={"X-Hub-Signature-256": "sha256=" + hmac.new(APP_SECRET.encode(), b"{not json", hashlib.sha256).hexdigest()}).status_code == 400
    time.sleep(0.3)
    assert count(services, Message) == 0 and not platform.graph


def test_handshake(server) -> None:  # type: ignore[no-untyped-def]
    live, _ = server
    ok = httpx.get(live.url + "/webhooks/messenger", params={"hub.mode": "subscribe", "hub.verify_token": VERIFY, "hub.challenge": "42"})
    assert ok.status_code == 200 and ok.text == "42"
    assert httpx.get(live.url + "/webhooks/messenger", params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"}).status_code == 403


def test_transient_send_failures_are_retried_and_permanent_ones_recorded(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = server
    platform.fail_next = [(500, {"error": {"message": "temporary", "code": 2}})] * 2
    messenger_post(live.url, [text_event("u3", "m_3", "trợ cấp thất nghiệp được bao nhiêu")])
    assert wait_for(lambda: platform.sent_to("u3"), 15)
    assert wait_for(lambda: count(services, Outbox, Outbox.status == "sent") == 1)  # recorded after the send
    with services.sessions() as s:
        row = s.scalar(select(Outbox))
        assert row is not None and row.status == "sent" and row.attempts == 3
    platform.fail_next = [(400, {"error": {"message": "This person isn't available right now.", "code": 551}})]
    messenger_post(live.url, [text_event("u4", "m_4", "rút bhxh một lần")])
    assert wait_for(lambda: count(services, Outbox, Outbox.status == "failed") == 1)
    with services.sessions() as s:
        failed = s.scalar(select(Outbox).where(Outbox.status == "failed"))
        assert failed is not None and failed.attempts == 1 and "551" in (failed.last_error or "")
    assert not platform.sent_to("u4")


def test_feedback_button_and_human_takeover(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = server
    messenger_post(live.url, [text_event("u5", "m_5", "nghỉ thai sản được mấy tháng")])
    first = wait_for(lambda: platform.sent_to("u5"))[0]
    up = next(q for q in first["message"]["quick_replies"] if q["payload"].startswith("FEEDBACK:up:"))
    quick = {"sender": {"id": "u5"}, "recipient": {"id": PAGE_ID}, "timestamp": 2,
             "message": {"mid": "m_6", "text": up["title"], "quick_reply": {"payload": up["payload"]}}}
    messenger_post(live.url, [quick])
    assert wait_for(lambda: count(services, Feedback, Feedback.helpful.is_(True)) == 1)
    # asking for a person: a handover reply, then the bot stays quiet
    messenger_post(live.url, [text_event("u5", "m_7", "cho em gặp nhân viên tư vấn")])
    wait_for(lambda: len(platform.sent_to("u5")) >= 3)
    before = len(platform.sent_to("u5"))
    messenger_post(live.url, [text_event("u5", "m_8", "tuổi nghỉ hưu của nam")])
    time.sleep(0.5)
    assert len(platform.sent_to("u5")) == before
    assert count(services, Message, Message.external_id == "m_8") == 1  # stored all the same
    with services.sessions() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "messenger"))
        assert conv is not None and conv.state == "human"
    services.pipeline.release(conv.id)
    messenger_post(live.url, [text_event("u5", "m_9", "tuổi nghỉ hưu của nam")])
    assert wait_for(lambda: len(platform.sent_to("u5")) == before + 1)


def test_a_staff_reply_from_the_inbox_pauses_the_bot(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, _ = server
    echo = {"sender": {"id": PAGE_ID}, "recipient": {"id": "u6"}, "timestamp": 3,
            "message": {"is_echo": True, "app_id": 263902037430900, "mid": "m_echo", "text": "Dạ, em chào anh"}}
    assert messenger_post(live.url, [echo]).status_code == 200
    messenger_post(live.url, [text_event("u6", "m_10", "bhyt")])
    time.sleep(0.5)
    assert not platform.sent_to("u6")


def zalo_post(url: str, user: str, msg_id: str, text: str, event: str = "user_send_text") -> httpx.Response:
    ts = "1732500000000"
    obj = {"app_id": ZALO_APP, "event_name": event, "timestamp": ts, "sender": {"id": user},
           "recipient": {"id": OA_ID}, "message": {"msg_id": msg_id, "text": text}}
    raw = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    mac = hashlib.sha256(ZALO_APP.encode() + raw + ts.encode() + OA_SECRET.encode()).hexdigest()
    return httpx.post(url + "/webhooks/zalo", content=raw, headers={"X-ZEvent-Signature": "mac=" + mac})


def test_zalo_refreshes_an_expired_token_once_and_saves_the_new_refresh_token(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = server
    assert httpx.post(live.url + "/webhooks/zalo", content=b"{}").status_code == 200  # the save-time probe
    assert zalo_post(live.url, "z1", "zm1", "đóng bhxh bao nhiêu năm thì được lương hưu").status_code == 200
    assert zalo_post(live.url, "z2", "zm2", "thẻ bhyt bị mất làm lại ở đâu").status_code == 200
    assert wait_for(lambda: len(platform.zalo) == 2, 15)
    assert len(platform.oauth) == 1  # single-flight: two sends, one refresh
    assert platform.oauth[0]["secret_key"] == ZALO_SECRET and platform.oauth[0]["refresh_token"] == "refresh-1"
    with services.sessions() as s:
        token = s.get(ChannelToken, "zalo")
        assert token is not None and token.refresh_token == "refresh-2" and token.access_token == platform.zalo_token
    assert all(0 < len(m["message"]["text"]) <= 2000 for m in platform.zalo)
    assert zalo_post(live.url, "z1", "zm1", "đóng bhxh bao nhiêu năm thì được lương hưu").status_code == 200
    time.sleep(0.5)
    assert len(platform.zalo) == 2  # the retried delivery is not answered again
    bad = httpx.post(live.url + "/webhooks/zalo", content=b'{"event_name":"user_send_text"}', headers={"X-ZEvent-Signature": "mac=" + "0" * 64})
    assert bad.status_code == 403


def test_a_reply_stored_before_a_crash_is_sent_after_restart(platform: Platform, database_url: str, bot: Bot) -> None:
    settings = Settings(database_url=database_url, messenger_verify_token=VERIFY, messenger_app_secret=APP_SECRET,
                        messenger_page_token=PAGE_TOKEN, messenger_api_base=platform.url + "/graph", dispatch_interval=0.05)
    from webhooks.base import InboundEvent

    crashed = build_services(settings, bot=bot)  # stores the event and its reply, never sends
    assert crashed.pipeline.handle(InboundEvent("messenger", "u7", "nghỉ thai sản mấy tháng", event_id="m_c1"))
    crashed.close()
    assert not platform.sent_to("u7")
    restarted = build_services(settings, bot=bot)
    with LiveServer(restarted):
        assert wait_for(lambda: platform.sent_to("u7"))
    restarted.close()


def test_a_channel_without_settings_is_disabled(live_server) -> None:  # type: ignore[no-untyped-def]
    assert httpx.post(live_server.url + "/webhooks/messenger", content=b"{}").status_code == 404
    assert httpx.post(live_server.url + "/webhooks/zalo", content=b"{}").status_code == 404
    health = httpx.get(live_server.url + "/healthz").json()
    assert health["channels"] == {"messenger": {"enabled": False}, "zalo": {"enabled": False}}


def test_two_processes_racing_to_refresh_the_zalo_token_refresh_once(platform: Platform, database_url: str, bot: Bot) -> None:
    import asyncio

    from app.tokens import ZaloTokens

    settings = Settings(database_url=database_url, zalo_app_id=ZALO_APP, zalo_app_secret=ZALO_SECRET,
                        zalo_oa_secret=OA_SECRET, zalo_access_token="old", zalo_refresh_token="refresh-1",
                        zalo_api_base=platform.url + "/zalo", zalo_oauth_base=platform.url + "/oauth")
    one, two = build_services(settings, bot=bot), build_services(settings, bot=bot)  # two engines, one database
    platform.oauth_delay = 0.5
    results: list[str] = []

    def refresh(tokens: ZaloTokens) -> None:
        async def go() -> str:
            async with httpx.AsyncClient() as client:
                return await tokens.refresh(client, "old")
        results.append(asyncio.run(go()))

    assert one.zalo_tokens is not None and two.zalo_tokens is not None
    threads = [threading.Thread(target=refresh, args=(t,)) for t in (one.zalo_tokens, two.zalo_tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [platform.zalo_token, platform.zalo_token]
    assert len(platform.oauth) == 1
    one.close()
    two.close()


def test_a_failed_refresh_is_visible_in_healthz(platform: Platform, database_url: str, bot: Bot) -> None:
    settings = Settings(database_url=database_url, zalo_app_id=ZALO_APP, zalo_app_secret=ZALO_SECRET,
                        zalo_oa_secret=OA_SECRET, zalo_access_token="old", zalo_refresh_token="refresh-1",
                        zalo_api_base=platform.url + "/zalo", zalo_oauth_base=platform.url + "/no-such-oauth",
                        dispatch_interval=0.05)
    services = build_services(settings, bot=bot)
    with LiveServer(services) as live:
        zalo_post(live.url, "z9", "zm9", "bhyt hộ gia đình đóng bao nhiêu")
        health = wait_for(lambda: httpx.get(live.url + "/healthz").json()["channels"]["zalo"].get("token_error"), 15)
        assert health and "refresh" in health
        assert not platform.zalo
    services.close()


def test_setup_profile_sets_get_started_greeting_and_menu(platform: Platform, tmp_path: Any) -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "VSSBOT_DATABASE_URL": f"sqlite:///{tmp_path / 'p.db'}", "VSSBOT_MESSENGER_PAGE_TOKEN": PAGE_TOKEN,
           "VSSBOT_MESSENGER_API_BASE": platform.url + "/graph"}
    vssbot = str(Path(sys.executable).parent / "vssbot")
    proc = subprocess.run([vssbot, "messenger", "setup-profile"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (call,) = platform.profile
    assert call["token"] == [PAGE_TOKEN]
    body = call["body"]
    assert body["get_started"] == {"payload": "GET_STARTED"}
    assert {g["locale"] for g in body["greeting"]} == {"default", "en_US"}
    default_menu = next(m for m in body["persistent_menu"] if m["locale"] == "default")["call_to_actions"]
    assert 1 < len(default_menu) <= 20 and {"type": "postback", "title": "Thai sản", "payload": "MENU:maternity"} in default_menu


def test_oversized_and_unknown_deliveries(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = server
    big = b'{"object":"page","entry":[' + b" " * (300 * 1024) + b"]}"
    assert httpx.post(live.url + "/webhooks/messenger", content=big).status_code == 413
    raw = json.dumps({"object": "instagram", "entry": []}).encode()
    sig = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    ignored = httpx.post(live.url + "/webhooks/messenger", content=raw, headers={"X-Hub-Signature-256": sig})
    assert ignored.status_code == 200 and ignored.json() == {"status": "ignored"}  # Meta would retry a 4xx
    assert count(services, Message) == 0


def test_zalo_echo_of_the_bots_own_reply_does_not_pause_it(server, platform: Platform) -> None:  # type: ignore[no-untyped-def]
    live, services = server
    zalo_post(live.url, "z5", "zm5", "bảo hiểm thất nghiệp được bao nhiêu tiền")
    assert wait_for(lambda: count(services, Outbox, Outbox.status == "sent") == 1, 15)
    with services.sessions() as s:
        sent_id = s.scalar(select(Outbox.platform_message_id))
    ts = "1732500000001"
    obj = {"app_id": ZALO_APP, "event_name": "oa_send_text", "timestamp": ts, "sender": {"id": OA_ID},
           "recipient": {"id": "z5"}, "message": {"msg_id": sent_id, "text": "..."}}
    raw = json.dumps(obj, separators=(",", ":")).encode()
    mac = hashlib.sha256(ZALO_APP.encode() + raw + ts.encode() + OA_SECRET.encode()).hexdigest()
    assert httpx.post(live.url + "/webhooks/zalo", content=raw, headers={"X-ZEvent-Signature": "mac=" + mac}).status_code == 200
    zalo_post(live.url, "z5", "zm6", "thẻ bhyt bị mất thì làm lại ở đâu")
    assert wait_for(lambda: len(platform.zalo) == 2, 15)
    with services.sessions() as s:
        conv = s.scalar(select(Conversation).where(Conversation.channel == "zalo"))
        assert conv is not None and conv.state == "bot"
