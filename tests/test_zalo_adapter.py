"""The Zalo OA adapter: signatures on the signed sample, parsing every event kind, sending to a stand-in
Zalo API on loopback (success, errors in HTTP 200, 5xx, 429, timeouts, dropped connections), token refresh."""
from __future__ import annotations

import asyncio
import hashlib
import json
import queue
import threading
import time
import unicodedata
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from webhooks import zalo
from webhooks.base import Option, OutboundMessage, SendResult

APP_ID = "3608465248940903967"
OA_ID = "388613280878808645"
USER = "2468458835296117922"
OA_SECRET = "test_oa_secret_key"
APP_SECRET = "zalo_app_secret_xyz"

# Part E6 of channels.md, byte for byte, and its worked signature.
E6 = ('{"app_id":"3608465248940903967","user_id_by_app":"552177279717587730","event_name":"user_send_text",'
      '"timestamp":"1732500000123","sender":{"id":"2468458835296117922"},"recipient":{"id":"388613280878808645"},'
      '"message":{"msg_id":"96d3cdf3af150460909","text":"Xin chào"}}').encode()
E6_SIG = "mac=425452c892d902ce1c5cce16e98dd381d4c51473b739c0aec7a32e6c4fcb70ad"
E7 = b"""{"oa_id":"388613280878808645","follower":{"id":"2468458835296117922"},
 "user_id_by_app":"552177279717587730","event_name":"follow","source":"oa_profile",
 "app_id":"3608465248940903967","timestamp":"1732500500123"}"""
E8 = """{"app_id":"3608465248940903967","user_id_by_app":"552177279717587730",
 "event_name":"user_send_image","timestamp":"1732500600123",
 "sender":{"id":"2468458835296117922"},"recipient":{"id":"388613280878808645"},
 "message":{"msg_id":"a1b2c3d4e5f60718293","text":"ảnh biên lai",
   "attachments":[{"type":"image","payload":{
     "thumbnail":"https://photo-stal.zadn.vn/thumb/abc.jpg",
     "url":"https://photo-stal.zadn.vn/full/abc.jpg"}}]}}""".encode()
E9 = """{"app_id":"3608465248940903967","user_id_by_app":"552177279717587730",
 "event_name":"oa_send_text","timestamp":"1732500700123",
 "sender":{"id":"388613280878808645","admin_id":"7700000000000000001"},
 "recipient":{"id":"2468458835296117922"},
 "message":{"msg_id":"f0e1d2c3b4a596877","text":"Chào anh, em là nhân viên tư vấn."}}""".encode()


def sign(raw: bytes, ts: str, first: str = APP_ID, secret: str = OA_SECRET) -> str:
    return "mac=" + hashlib.sha256(first.encode() + raw + ts.encode() + secret.encode()).hexdigest()


def event(name: str, **fields: Any) -> bytes:
    obj = {"app_id": APP_ID, "user_id_by_app": "552177279717587730", "event_name": name,
           "timestamp": "1732500000123", "sender": {"id": USER}, "recipient": {"id": OA_ID}, **fields}
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


# --- verify ------------------------------------------------------------------------------------------


def test_the_signed_sample_verifies_and_the_believed_variant_matches() -> None:
    assert zalo.verify(APP_ID, OA_SECRET, E6, E6_SIG)
    assert zalo.signature_variant(APP_ID, OA_SECRET, E6, E6_SIG) == "app_id+oa_secret_key"


@pytest.mark.parametrize("header", [E6_SIG.upper().replace("MAC=", "mac="), E6_SIG.removeprefix("mac="),
                                    f"  {E6_SIG}\t", "MAC=" + E6_SIG[4:]])
def test_harmless_spellings_of_the_header_verify(header: str) -> None:
    assert zalo.verify(APP_ID, OA_SECRET, E6, header)


@pytest.mark.parametrize("body", [
    E6.replace(b"Xin ch\xc3\xa0o", b"Xin chao"),                       # text changed
    E6.replace(b"1732500000123", b"1732500000124"),                     # timestamp changed
    E6.replace(b'"app_id":"3608465248940903967"', b'"app_id":"1"'),     # signed id is configured, not read
    E6 + b"\n",                                                         # one trailing byte
    json.dumps(json.loads(E6), ensure_ascii=False).encode(),            # re-serialised (spaces)
    json.dumps(json.loads(E6), separators=(",", ":")).encode(),         # re-serialised (\u00e0 escaped)
])
def test_any_change_to_the_signed_bytes_fails(body: bytes) -> None:
    assert not zalo.verify(APP_ID, OA_SECRET, body, E6_SIG)


@pytest.mark.parametrize("header", [None, "", "mac=", "mac=xyz", "sha256=" + E6_SIG[4:], "mac=" + "g" * 64,
                                    E6_SIG[:-1], E6_SIG + "0", "mac=" + "é" * 64, "mac=" + "0" * 64, "\x00"])
def test_missing_or_garbled_headers_fail_without_raising(header: str | None) -> None:
    assert not zalo.verify(APP_ID, OA_SECRET, E6, header)


def test_wrong_or_empty_credentials_fail() -> None:
    assert not zalo.verify(APP_ID, "another_secret", E6, E6_SIG)
    assert not zalo.verify("1", OA_SECRET, E6, E6_SIG)
    # With no secret configured anyone could compute the digest: never accept it.
    assert not zalo.verify(APP_ID, "", E6, sign(E6, "1732500000123", secret=""))


def test_non_ascii_is_hashed_as_received_escaped_or_not() -> None:
    # Whether Zalo escapes non-ASCII is UNCONFIRMED: both forms verify when signed as sent.
    escaped = E6.replace("Xin chào".encode(), b"Xin ch\\u00e0o")
    assert b"\\u00e0" in escaped
    assert zalo.verify(APP_ID, OA_SECRET, escaped, sign(escaped, "1732500000123"))
    assert not zalo.verify(APP_ID, OA_SECRET, escaped, E6_SIG)
    assert zalo.parse(escaped)[0].text == zalo.parse(E6)[0].text == "Xin chào"


def test_the_uncertain_variants_are_accepted_only_when_configured() -> None:
    with_oa_id = sign(E6, "1732500000123", first=OA_ID)
    assert not zalo.verify(APP_ID, OA_SECRET, E6, with_oa_id)
    assert zalo.signature_variant(APP_ID, OA_SECRET, E6, with_oa_id, oa_id=OA_ID) == "oa_id+oa_secret_key"
    with_app_secret = sign(E6, "1732500000123", secret=APP_SECRET)
    assert not zalo.verify(APP_ID, OA_SECRET, E6, with_app_secret)
    assert zalo.signature_variant(APP_ID, OA_SECRET, E6, with_app_secret, app_secret=APP_SECRET) == "app_id+app_secret"
    # Configuring the alternatives does not stop the believed variant from matching.
    assert zalo.signature_variant(APP_ID, OA_SECRET, E6, E6_SIG, oa_id=OA_ID, app_secret=APP_SECRET) \
        == "app_id+oa_secret_key"


def test_the_timestamp_header_is_a_fallback_only() -> None:
    body = b'{"event_name":"user_send_text","sender":{"id":"1"},"message":{"msg_id":"m","text":"x"}}'
    sig = sign(body, "1732500000999")
    assert not zalo.verify(APP_ID, OA_SECRET, body, sig)
    assert zalo.verify(APP_ID, OA_SECRET, body, sig, timestamp_header="1732500000999")
    # The body's own timestamp still verifies when an unrelated header is present.
    assert zalo.verify(APP_ID, OA_SECRET, E6, E6_SIG, timestamp_header="42")


@pytest.mark.parametrize("body", [b"", b"{}", b"not json", b"\xff\xfe", b"[" * 100_000, b'{"timestamp":true}'])
def test_unsignable_bodies_fail_without_raising(body: bytes) -> None:
    assert not zalo.verify(APP_ID, OA_SECRET, body, E6_SIG)


def test_the_empty_probe_is_recognised() -> None:
    assert zalo.is_probe(b"{}") and zalo.is_probe(b" { }\n") and zalo.is_probe(b"")
    assert not zalo.is_probe(E6) and not zalo.is_probe(b"[]")
    assert zalo.parse(b"{}") == [] and zalo.parse(b"") == []


# --- parse -------------------------------------------------------------------------------------------


def test_text_sample() -> None:
    [ev] = zalo.parse(E6)
    assert (ev.channel, ev.kind, ev.user_id, ev.text, ev.event_id, ev.payload) == (
        "zalo", "text", USER, "Xin chào", "96d3cdf3af150460909", None)
    assert ev.sent_at == datetime(2024, 11, 25, 2, 0, 0, 123000, tzinfo=UTC)
    assert ev.extra == {"event_name": "user_send_text", "oa_id": OA_ID, "app_id": APP_ID,
                        "user_id_by_app": "552177279717587730"}


def test_follow_sample_gets_a_stable_derived_id() -> None:
    [ev] = zalo.parse(E7)
    assert (ev.kind, ev.user_id, ev.text) == ("follow", USER, "")
    assert ev.event_id == f"follow:{USER}:1732500500123" == zalo.parse(E7)[0].event_id
    assert ev.extra["oa_id"] == OA_ID and ev.extra["source"] == "oa_profile"


def test_image_sample_is_an_attachment() -> None:
    [ev] = zalo.parse(E8)
    assert (ev.kind, ev.user_id, ev.event_id, ev.text) == ("attachment", USER, "a1b2c3d4e5f60718293", "ảnh biên lai")
    assert ev.extra["attachment_type"] == "image"
    assert ev.extra["attachment_url"] == "https://photo-stal.zadn.vn/full/abc.jpg"


def test_oa_echo_sample_is_an_echo_in_the_users_conversation() -> None:
    [ev] = zalo.parse(E9)
    assert (ev.kind, ev.user_id, ev.event_id) == ("echo", USER, "f0e1d2c3b4a596877")
    assert ev.text == "Chào anh, em là nhân viên tư vấn."
    assert ev.extra["oa_id"] == OA_ID and ev.extra["admin_id"] == "7700000000000000001"


@pytest.mark.parametrize("name", ["oa_send_image", "oa_send_list", "oa_send_template", "oa_send_file"])
def test_every_oa_send_event_is_an_echo(name: str) -> None:
    raw = event(name, sender={"id": OA_ID}, recipient={"id": USER}, message={"msg_id": "e1"})
    [ev] = zalo.parse(raw)
    assert (ev.kind, ev.user_id, ev.event_id, ev.text) == ("echo", USER, "e1", "")


def test_chatnow_with_its_flat_user_id() -> None:
    raw = json.dumps({"event_name": "user_click_chatnow", "user_id": USER, "oa_id": OA_ID, "app_id": APP_ID,
                      "timestamp": "1732500800123"}).encode()
    [ev] = zalo.parse(raw)
    assert (ev.kind, ev.user_id, ev.event_id) == ("chatnow", USER, f"user_click_chatnow:{USER}:1732500800123")


@pytest.mark.parametrize("text,payload", [("#TOPIC_FEES", "TOPIC_FEES"), (" #maternity.benefit-amount ",
                                                                        "maternity.benefit-amount")])
def test_a_button_or_menu_query_is_read_as_its_payload(text: str, payload: str) -> None:
    [ev] = zalo.parse(event("user_send_text", message={"msg_id": "q1", "text": text}))
    assert (ev.kind, ev.payload, ev.text, ev.event_id) == ("postback", payload, text, "q1")


@pytest.mark.parametrize("text", ["#", "# bhxh", "đóng #bhxh", "hỏi về #bhxh nhé"])
def test_text_that_merely_contains_a_hash_stays_text(text: str) -> None:
    [ev] = zalo.parse(event("user_send_text", message={"msg_id": "t1", "text": text}))
    assert (ev.kind, ev.payload) == ("text", None)


@pytest.mark.parametrize("name,atype", [("user_send_sticker", "sticker"), ("user_send_gif", "gif"),
                                        ("user_send_audio", "audio"), ("user_send_video", "video"),
                                        ("user_send_file", "file"), ("user_send_link", "link"),
                                        ("user_send_location", "location"),
                                        ("user_send_business_card", "business_card")])
def test_every_media_message_is_an_attachment(name: str, atype: str) -> None:
    [ev] = zalo.parse(event(name, message={"msg_id": "m1"}))
    assert (ev.kind, ev.text, ev.extra["attachment_type"]) == ("attachment", "", atype)
    loc = event(name, message={"msg_id": "m2", "attachments": [
        {"type": atype, "payload": {"coordinates": {"latitude": 21.02, "longitude": 105.85}}}]})
    assert zalo.parse(loc)[0].extra["attachment_type"] == atype


@pytest.mark.parametrize("name,fields", [
    ("user_received_message", {"sender": {"id": OA_ID}, "message": {"msg_id": "z1"}}),
    ("user_seen_message", {"sender": {"id": OA_ID}, "message": {"msg_ids": ["z1", "z2"]}}),
    ("unfollow", {"follower": {"id": USER}}),
    ("user_reacted_message", {"message": {"msg_id": "z1", "react_icon": "/-heart"}}),
    ("oa_reacted_message", {}), ("user_submit_info", {"info": {"name": "A", "phone": "0900000000"}}),
    ("anonymous_send_text", {"message": {"text": "hi"}}), ("oa_send_anonymous_text", {}),
])
def test_receipts_and_other_non_input_events_are_ignored(name: str, fields: dict[str, Any]) -> None:
    assert zalo.parse(event(name, **fields)) == []


def test_an_unknown_event_type_is_a_distinguishable_value_error() -> None:
    with pytest.raises(zalo.UnsupportedEvent, match="change_template_status"):
        zalo.parse(event("change_template_status"))
    assert issubclass(zalo.UnsupportedEvent, ValueError)


def test_numeric_ids_keep_their_exact_digits() -> None:
    raw = (b'{"event_name":"user_send_text","timestamp":1732500000123,"sender":{"id":2468458835296117922},'
           b'"recipient":{"id":388613280878808645},"message":{"msg_id":96123456789012345678,"text":"hi"}}')
    [ev] = zalo.parse(raw)
    assert (ev.user_id, ev.event_id, ev.extra["oa_id"]) == (USER, "96123456789012345678", OA_ID)
    assert zalo.verify(APP_ID, OA_SECRET, raw, sign(raw, "1732500000123"))


def test_inbound_text_is_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "Xin chào, đóng bảo hiểm")
    [ev] = zalo.parse(event("user_send_text", message={"msg_id": "n1", "text": decomposed}))
    assert ev.text == unicodedata.normalize("NFC", decomposed) != decomposed


@pytest.mark.parametrize("raw,match", [
    (b"{not json", "malformed JSON"), (b"\xff\xfe{}", "malformed JSON"), (b"[" * 100_000, "malformed JSON"),
    (b"[]", "one JSON object"), (b'[{"event_name":"follow"}]', "one JSON object"), (b"42", "one JSON object"),
    (b'{"object":"page","entry":[]}', "not a Zalo OA event"), (b'{"event_name":7}', "not a Zalo OA event"),
    (b'{"event_name":""}', "not a Zalo OA event"),
])
def test_malformed_bodies_and_unknown_objects_raise_value_error(raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zalo.parse(raw)


@pytest.mark.parametrize("raw,match", [
    (event("user_send_text", sender=None), "sender.id"),
    (event("user_send_text", sender={}), "sender.id"),
    (event("user_send_text"), "missing message"),
    (event("user_send_text", message={"text": "hi"}), "msg_id"),
    (event("user_send_text", message={"msg_id": "m"}), "message.text"),
    (event("user_send_text", message={"msg_id": "m", "text": {"a": 1}}), "message.text"),
    (event("user_send_text", sender={"id": True}, message={"msg_id": "m", "text": "x"}), "sender.id"),
    (event("user_send_text", sender="2468", message={"msg_id": "m", "text": "x"}), "sender"),
    (event("user_send_image", message={"msg_id": "m", "attachments": "nope"}), "attachments"),
    (event("user_send_text", timestamp="yesterday", message={"msg_id": "m", "text": "x"}), "timestamp"),
    (event("user_send_text", timestamp="9" * 30, message={"msg_id": "m", "text": "x"}), "timestamp"),
    (event("oa_send_text", recipient={}, message={"msg_id": "m"}), "recipient.id"),
    (json.dumps({"event_name": "follow", "timestamp": "1"}).encode(), "user id"),
    (json.dumps({"event_name": "follow", "follower": {"id": USER}}).encode(), "timestamp"),
])
def test_missing_or_mistyped_fields_raise_value_error(raw: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        zalo.parse(raw)


@pytest.mark.parametrize("sample", [E6, E7, E8, E9])
def test_no_truncation_or_corruption_of_a_sample_raises_anything_but_value_error(sample: bytes) -> None:
    variants = [sample[:i] for i in range(len(sample))]
    variants += [sample.replace(b'"', b"", 1), sample.replace(b":", b":null,", 1), sample.replace(b"{", b"[", 2)]
    for raw in variants:
        try:
            zalo.parse(raw)
        except ValueError:
            pass


def _mutations(obj: Any) -> Iterator[Any]:
    """The object with each value in turn replaced by a value of another type."""
    odd: list[Any] = [None, 0, -1.5, True, "", "x", [], {}, [{}], 10**30, "9" * 30, "١٢٣"]
    items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj)) if isinstance(obj, list) else []
    for key, value in items:
        for replacement in odd:
            copy = dict(obj) if isinstance(obj, dict) else list(obj)
            copy[key] = replacement
            yield copy
        for inner in _mutations(value):
            copy = dict(obj) if isinstance(obj, dict) else list(obj)
            copy[key] = inner
            yield copy


@pytest.mark.parametrize("sample", [E6, E7, E8, E9])
def test_values_of_unexpected_types_raise_nothing_but_value_error(sample: bytes) -> None:
    count = 0
    for mutated in _mutations(json.loads(sample)):
        count += 1
        try:
            events = zalo.parse(json.dumps(mutated).encode())
        except ValueError:
            continue
        assert all(isinstance(e.user_id, str) and e.user_id and isinstance(e.text, str) for e in events)
    assert count > 50


# --- send against a stand-in Zalo API on loopback ------------------------------------------------------


@dataclass
class Platform:
    """A stand-in for openapi.zalo.me / oauth.zaloapp.com that records requests and plays scripted answers."""

    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    script: queue.Queue[tuple[Any, ...]] = field(default_factory=queue.Queue)

    def answer(self, *answers: tuple[Any, ...]) -> None:
        for a in answers:
            self.script.put(a)


@pytest.fixture
def platform() -> Iterator[Platform]:
    state = Platform(url="")
    counter = iter(range(1, 1000))

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            state.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                   "raw": raw})
            try:
                kind, *args = state.script.get_nowait()
            except queue.Empty:
                kind, args = "json", [200, {"error": 0, "message": "Success",
                                            "data": {"message_id": f"z_sent_{next(counter)}", "user_id": USER}}]
            if kind == "close":  # drop the connection without an answer
                self.close_connection = True
                return
            if kind == "sleep":
                time.sleep(args[0])
                kind, args = "json", [200, {"error": 0, "message": "late", "data": {"message_id": "late"}}]
            status, body = args
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (timeout test)
                pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def run_send(platform: Platform, msg: OutboundMessage, timeout: float = 5.0, token: str = "tok") \
        -> SendResult:
    async def go() -> SendResult:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await zalo.send(client, platform.url + "/zalo/", token, msg)
    return asyncio.run(go())


def reply(text: str, *options: Option, user: str = USER) -> OutboundMessage:
    return OutboundMessage(channel="zalo", user_id=user, text=text, options=tuple(options))


def bodies(platform: Platform) -> list[dict[str, Any]]:
    return [json.loads(r["raw"]) for r in platform.requests]


def test_a_reply_is_one_consultation_message(platform: Platform) -> None:
    result = run_send(platform, reply("Dạ, mức hưởng là 75% mức bình quân tiền lương."), token="oa_access_1")
    assert result == SendResult(ok=True, platform_message_id="z_sent_1", parts_sent=1)
    [req] = platform.requests
    assert req["path"] == "/zalo/v3.0/oa/message/cs"
    assert req["headers"]["access_token"] == "oa_access_1"
    assert req["headers"]["content-type"] == "application/json"
    assert "authorization" not in req["headers"]
    assert json.loads(req["raw"]) == {"recipient": {"user_id": USER},
                                      "message": {"text": "Dạ, mức hưởng là 75% mức bình quân tiền lương."}}
    assert "mức".encode() in req["raw"]  # UTF-8 on the wire


def test_options_become_hidden_query_buttons_on_the_message(platform: Platform) -> None:
    long_title = "Thủ tục hưởng chế độ thai sản khi sinh con cho lao động nữ đang đóng bảo hiểm xã hội bắt buộc " * 2
    options = [Option("Thai sản", "maternity.benefit"), Option(long_title, "#already_prefixed")] + \
        [Option(f"Mục {i}", f"entry_{i}") for i in range(3, 9)]
    assert run_send(platform, reply("Anh/chị muốn hỏi về chế độ nào?", *options)).ok
    [body] = bodies(platform)
    assert body["message"]["text"] == "Anh/chị muốn hỏi về chế độ nào?"
    attachment = body["message"]["attachment"]
    assert attachment["type"] == "template" and attachment["payload"]["template_type"] == "button"
    buttons = attachment["payload"]["buttons"]
    assert len(buttons) == zalo.MAX_BUTTONS
    assert buttons[0] == {"title": "Thai sản", "type": "oa.query.hide", "payload": "#maternity.benefit"}
    assert buttons[1]["payload"] == "#already_prefixed"
    assert len(buttons[1]["title"]) == zalo.MAX_BUTTON_TITLE and buttons[1]["title"].endswith("…")
    assert [b["payload"] for b in buttons[2:]] == ["#entry_3", "#entry_4", "#entry_5"]
    # What a tap sends back is parsed as that payload again.
    [ev] = zalo.parse(event("user_send_text", message={"msg_id": "tap", "text": buttons[0]["payload"]}))
    assert (ev.kind, ev.payload) == ("postback", "maternity.benefit")


def test_long_text_is_split_at_sentences_with_the_buttons_on_the_last_part(platform: Platform) -> None:
    sentence = "Người lao động đóng bảo hiểm xã hội đủ 20 năm thì được hưởng lương hưu hằng tháng. "
    text = sentence * 40  # about 3,400 characters
    result = run_send(platform, reply(text, Option("Lương hưu", "old_age.pension")))
    parts = bodies(platform)
    assert result == SendResult(ok=True, platform_message_id="z_sent_1,z_sent_2", parts_sent=2)
    assert len(parts) == 2 and all(p["recipient"] == {"user_id": USER} for p in parts)
    texts = [p["message"]["text"] for p in parts]
    assert all(0 < len(t) <= 2000 and t.endswith("tháng.") for t in texts)
    assert " ".join(texts) == text.strip()
    assert "attachment" not in parts[0]["message"] and "attachment" in parts[1]["message"]


def test_split_text_limits_and_fallbacks() -> None:
    assert zalo.split_text("  ngắn  ") == ["ngắn"] and zalo.split_text("   ") == []
    emoji = "😀" * 1500  # 3,000 UTF-16 units: counted strictly
    assert [len(p) for p in zalo.split_text(emoji)] == [1000, 500]
    assert [len(p) for p in zalo.split_text("a" * 4500)] == [2000, 2000, 500]
    paragraphs = zalo.split_text("x" * 1500 + "\n\n" + "y" * 1000)
    assert paragraphs == ["x" * 1500, "y" * 1000]
    words = zalo.split_text(("từ " * 1000).strip(), limit=100)
    assert all(len(p) <= 100 and not p.startswith(" ") and not p.endswith(" ") for p in words)
    assert " ".join(words) == ("từ " * 1000).strip()


def test_outbound_text_is_nfc(platform: Platform) -> None:
    decomposed = unicodedata.normalize("NFD", "Dạ, đóng bảo hiểm")
    run_send(platform, reply(decomposed))
    assert bodies(platform)[0]["message"]["text"] == unicodedata.normalize("NFC", decomposed)


def test_options_without_text_are_sent_as_buttons_alone(platform: Platform) -> None:
    assert run_send(platform, reply("", Option("Gặp nhân viên", "handover"))).ok
    [body] = bodies(platform)
    assert "text" not in body["message"]
    assert body["message"]["attachment"]["payload"]["buttons"] == [
        {"title": "Gặp nhân viên", "type": "oa.query.hide", "payload": "#handover"}]


def test_an_empty_message_is_refused_without_a_request(platform: Platform) -> None:
    result = run_send(platform, reply("  "))
    assert not result.ok and not result.retryable and "empty" in (result.error or "")
    assert platform.requests == []


@pytest.mark.parametrize("answer,retryable,token_expired,error_part", [
    (("json", 200, {"error": -216, "message": "Access token is invalid"}), True, True, "zalo -216: Access token"),
    (("json", 200, {"error": -220, "message": "access_token is expired or removed"}), True, True, "zalo -220"),
    (("json", 200, {"error": -230, "message": "User has not interacted with the OA in the past 7 days"}),
     False, False, "zalo -230: User has not interacted"),
    (("json", 200, {"error": -213, "message": "User has not followed OA"}), False, False, "zalo -213"),
    (("json", 200, {"error": -201, "message": "recipient is invalid"}), False, False, "zalo -201: recipient"),
    (("json", 200, {"error": "-32", "message": "Your OA reached limit call api"}), True, False, "zalo -32"),
    (("json", 500, {"error": -1, "message": "internal"}), True, False, "HTTP 500"),
    (("json", 502, b"<html>bad gateway</html>"), True, False, "HTTP 502"),
    (("json", 429, b"slow down"), True, False, "HTTP 429"),
    (("json", 200, b"<html>captive portal</html>"), True, False, "unreadable"),
    (("json", 404, b"not found"), False, False, "HTTP 404"),
    (("json", 400, {"error": -216, "message": "Access token is invalid"}), True, True, "zalo -216"),
    (("close",), True, False, "network"),
])
def test_failures_are_classified(platform: Platform, answer: tuple[Any, ...], retryable: bool,
                                 token_expired: bool, error_part: str) -> None:
    platform.answer(answer)
    result = run_send(platform, reply("xin chào"))
    assert not result.ok
    assert (result.retryable, result.token_expired) == (retryable, token_expired)
    assert error_part in (result.error or "")
    assert len(platform.requests) == 1  # the adapter itself never retries


def test_a_timeout_is_retryable(platform: Platform) -> None:
    platform.answer(("sleep", 1.0))
    result = run_send(platform, reply("xin chào"), timeout=0.2)
    assert (result.ok, result.retryable) == (False, True) and "timeout" in (result.error or "")


def test_a_refused_connection_is_retryable() -> None:
    port_owner = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{port_owner.server_address[1]}"
    port_owner.server_close()  # nothing listens there now
    result = run_send(Platform(url=url), reply("xin chào"))
    assert (result.ok, result.retryable) == (False, True) and "network" in (result.error or "")


def test_a_failure_after_a_sent_part_says_so(platform: Platform) -> None:
    platform.answer(("json", 200, {"error": 0, "message": "Success", "data": {"message_id": "p1"}}),
                    ("json", 200, {"error": -216, "message": "Access token is invalid"}))
    result = run_send(platform, reply("Câu một dài. " * 300))
    assert len(platform.requests) == 2
    assert (result.ok, result.token_expired, result.platform_message_id) == (False, True, "p1")
    assert (result.error or "").startswith("part 2/2 (1 sent): zalo -216")


# --- token refresh -----------------------------------------------------------------------------------


def run_refresh(platform: Platform, refresh_token: str = "refresh_old") -> tuple[str, str, int]:
    async def go() -> tuple[str, str, int]:
        async with httpx.AsyncClient(timeout=5) as client:
            return await zalo.refresh_access_token(client, platform.url + "/oauth", APP_ID, APP_SECRET, refresh_token)
    return asyncio.run(go())


def test_refresh_posts_the_form_with_the_app_secret_header(platform: Platform) -> None:
    platform.answer(("json", 200, {"access_token": "access_new", "refresh_token": "refresh_new",
                                   "expires_in": "90000"}))
    assert run_refresh(platform) == ("access_new", "refresh_new", 90000)
    [req] = platform.requests
    assert req["path"] == "/oauth/v4/oa/access_token"
    assert req["headers"]["secret_key"] == APP_SECRET
    assert req["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert urllib.parse.parse_qs(req["raw"].decode()) == {
        "app_id": [APP_ID], "grant_type": ["refresh_token"], "refresh_token": ["refresh_old"]}


def test_refresh_keeps_a_new_pair_even_without_a_usable_expires_in(platform: Platform) -> None:
    platform.answer(("json", 200, {"access_token": "a", "refresh_token": "r"}),
                    ("json", 200, {"access_token": "a", "refresh_token": "r", "expires_in": 3600}))
    assert run_refresh(platform) == ("a", "r", zalo.FALLBACK_EXPIRES_IN)
    assert run_refresh(platform) == ("a", "r", 3600)


def test_a_refused_refresh_token_is_a_permanent_error(platform: Platform) -> None:
    platform.answer(("json", 200, {"error": -14014, "error_name": "Invalid refresh token",
                                   "error_description": "Refresh token is invalid"}))
    with pytest.raises(zalo.ZaloTokenError, match="-14014.*Invalid refresh token") as info:
        run_refresh(platform)
    assert info.value.code == -14014 and not info.value.retryable


@pytest.mark.parametrize("answer", [("json", 503, b"busy"), ("close",)])
def test_refresh_server_or_network_failures_are_retryable(platform: Platform, answer: tuple[Any, ...]) -> None:
    platform.answer(answer)
    with pytest.raises(zalo.ZaloTokenError) as info:
        run_refresh(platform)
    assert info.value.retryable and info.value.code is None


@pytest.mark.parametrize("body", [b"<html>", {"access_token": "only_access"},
                                  {"refresh_token": "", "access_token": "a"}])
def test_refresh_without_a_complete_pair_is_an_error(platform: Platform, body: Any) -> None:
    platform.answer(("json", 200, body))
    with pytest.raises(zalo.ZaloTokenError):
        run_refresh(platform)
