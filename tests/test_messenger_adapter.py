"""The Messenger adapter against the signed samples of channels.md Part E and a fake Graph API on loopback."""
from __future__ import annotations

from dataclasses import replace

import asyncio
import copy
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from webhooks import messenger
from webhooks.base import Option, OutboundMessage, SendResult

SECRET = "test_app_secret"
PAGE = "102938475610293"
PSID = "7392015648120394"

# channels.md E1, byte for byte (the \u00e0 stays escaped, as Meta sends it).
E1 = (
    b'{"object":"page","entry":[{"id":"102938475610293","time":1732500000500,"messaging":[{"sender":'
    b'{"id":"7392015648120394"},"recipient":{"id":"102938475610293"},"timestamp":1732500000123,'
    b'"message":{"mid":"m_AbC1dEf2GhI3jKl4","text":"Xin ch\\u00e0o"}}]}]}'
)
E1_SIGNATURE = "sha256=7995635369458514851e4ee8fd49df144cb216e7578061305d5877167139134f"

E2 = """{"object":"page","entry":[{"id":"102938475610293","time":1732500100500,"messaging":[{
  "sender":{"id":"7392015648120394"},"recipient":{"id":"102938475610293"},"timestamp":1732500100321,
  "message":{"mid":"m_QR9x8y7z","text":"Học phí","quick_reply":{"payload":"TOPIC_FEES"}}}]}]}""".encode()

E3 = """{"object":"page","entry":[{"id":"102938475610293","time":1732500200500,"messaging":[{
  "sender":{"id":"7392015648120394"},"recipient":{"id":"102938475610293"},"timestamp":1732500200400,
  "postback":{"mid":"m_PB1a2b3c","title":"Bắt đầu","payload":"GET_STARTED",
              "referral":{"ref":"campaign_tet","source":"SHORTLINK","type":"OPEN_THREAD"}}}]}]}""".encode()

E4 = """{"object":"page","entry":[
  {"id":"102938475610293","time":1732500300500,"messaging":[{
    "sender":{"id":"7392015648120394"},"recipient":{"id":"102938475610293"},"timestamp":1732500300100,
    "message":{"mid":"m_Batch001","text":"Còn chỗ lớp tối không?"}}]},
  {"id":"556677889900112","time":1732500300500,"messaging":[{
    "sender":{"id":"6841100000000001"},"recipient":{"id":"556677889900112"},"timestamp":1732500300200,
    "read":{"watermark":1732500299000}}]}]}""".encode()

E5 = """{"object":"page","entry":[{"id":"102938475610293","time":1732500400500,"messaging":[{
  "sender":{"id":"102938475610293"},"recipient":{"id":"7392015648120394"},"timestamp":1732500400300,
  "message":{"is_echo":true,"app_id":1517776481860111,"metadata":"bot:turn:42",
             "mid":"m_Echo777","text":"Dạ, lớp tối còn 3 chỗ ạ."}}]}]}""".encode()


def sign(body: bytes, secret: str = SECRET, algo: Any = hashlib.sha256, prefix: str = "sha256=") -> str:
    return prefix + hmac.new(secret.encode(), body, algo).hexdigest()


def envelope(*items: dict[str, Any], standby: list[dict[str, Any]] | None = None) -> bytes:
    entry: dict[str, Any] = {"id": PAGE, "time": 1732500000500, "messaging": list(items)}
    if standby is not None:
        entry["standby"] = standby
    return json.dumps({"object": "page", "entry": [entry]}).encode()


def item(ts: int = 1732500000123, sender: str = PSID, recipient: str = PAGE, **body: Any) -> dict[str, Any]:
    return {"sender": {"id": sender}, "recipient": {"id": recipient}, "timestamp": ts, **body}


# --- verify / handshake -------------------------------------------------------------------------


def test_verify_accepts_the_signed_sample_over_raw_bytes() -> None:
    assert messenger.verify(E1, {"X-Hub-Signature-256": E1_SIGNATURE}, SECRET)
    assert messenger.verify(E1, {"x-hub-signature-256": E1_SIGNATURE}, SECRET)  # any header case
    assert messenger.verify(E1, httpx.Headers({"X-HUB-SIGNATURE-256": E1_SIGNATURE}), SECRET)
    assert messenger.verify(E1, {"X-Hub-Signature-256": E1_SIGNATURE.upper().replace("SHA256=", "sha256=")}, SECRET)


def test_verify_fails_on_a_reserialised_body() -> None:
    # The classic "fails only on Vietnamese" bug: parsing and dumping the JSON changes the bytes.
    parsed = json.loads(E1)
    assert parsed["entry"][0]["messaging"][0]["message"]["text"] == "Xin chào"
    for body in (
        json.dumps(parsed, ensure_ascii=False, separators=(",", ":")).encode(),
        json.dumps(parsed).encode(),
    ):
        assert body != E1
        assert not messenger.verify(body, {"X-Hub-Signature-256": E1_SIGNATURE}, SECRET)


@pytest.mark.parametrize(
    "body, headers",
    [
        (E1.replace(b"Xin", b"Xim"), {"X-Hub-Signature-256": E1_SIGNATURE}),  # tampered body
        (E1 + b"\n", {"X-Hub-Signature-256": E1_SIGNATURE}),  # one byte more
        (E1, {}),  # missing header
        (E1, {"X-Hub-Signature-256": ""}),
        (E1, {"X-Hub-Signature-256": E1_SIGNATURE.removeprefix("sha256=")}),  # no prefix
        (E1, {"X-Hub-Signature-256": "sha1=" + E1_SIGNATURE.removeprefix("sha256=")}),  # wrong prefix
        (E1, {"X-Hub-Signature-256": E1_SIGNATURE[:-2]}),  # truncated
        (E1, {"X-Hub-Signature-256": "sha256=xyzé\u00e0 garbage"}),  # garbled, non-ASCII
        (E1, {"X-Hub-Signature-256": sign(E1, "another_secret")}),
        (E1, {"X-Hub-Signature": sign(E1, algo=hashlib.sha1, prefix="sha1=")}),  # SHA-1 not accepted by default
    ],
)
def test_verify_rejects(body: bytes, headers: dict[str, str]) -> None:
    assert messenger.verify(body, headers, SECRET) is False


def test_verify_with_an_empty_secret_rejects_everything() -> None:
    assert not messenger.verify(E1, {"X-Hub-Signature-256": sign(E1, "")}, "")


def test_verify_sha1_fallback_only_when_asked_and_only_without_sha256() -> None:
    sha1 = sign(E2, algo=hashlib.sha1, prefix="sha1=")
    assert messenger.verify(E2, {"X-Hub-Signature": sha1}, SECRET, accept_sha1=True)
    assert not messenger.verify(E2, {"X-Hub-Signature": sha1}, SECRET)
    # a present but wrong SHA-256 header is not rescued by a right SHA-1 one
    headers = {"X-Hub-Signature-256": sign(E2, "wrong"), "X-Hub-Signature": sha1}
    assert not messenger.verify(E2, headers, SECRET, accept_sha1=True)


def test_verify_signs_formatted_multiline_samples_too() -> None:
    for body in (E2, E3, E4, E5):
        assert messenger.verify(body, {"X-Hub-Signature-256": sign(body)}, SECRET)
        assert not messenger.verify(body.replace(b" ", b"", 1), {"X-Hub-Signature-256": sign(body)}, SECRET)


def test_handshake() -> None:
    assert messenger.handshake("subscribe", "my-verify", "1158201444", "my-verify") == "1158201444"
    assert messenger.handshake("subscribe", "wrong", "1158201444", "my-verify") is None
    assert messenger.handshake("unsubscribe", "my-verify", "1158201444", "my-verify") is None
    assert messenger.handshake(None, "my-verify", "1158201444", "my-verify") is None
    assert messenger.handshake("subscribe", None, "1158201444", "my-verify") is None
    assert messenger.handshake("subscribe", "my-verify", None, "my-verify") is None
    assert messenger.handshake("subscribe", "my-verify", "", "my-verify") is None
    assert messenger.handshake("subscribe", "", "1", "") is None  # no verify token configured
    assert messenger.handshake("subscribe", "chào", "1", "my-verify") is None  # non-ASCII does not raise


# --- parse --------------------------------------------------------------------------------------


def test_parse_text_sample() -> None:
    [event] = messenger.parse(E1)
    assert (event.channel, event.user_id, event.kind, event.text) == ("messenger", PSID, "text", "Xin chào")
    assert event.event_id == "m_AbC1dEf2GhI3jKl4"
    assert event.payload is None
    assert event.sent_at is not None and event.sent_at.isoformat() == "2024-11-25T02:00:00.123000+00:00"
    assert event.extra["page_id"] == PAGE


def test_parse_quick_reply_is_a_postback_with_its_payload() -> None:
    [event] = messenger.parse(E2)
    assert (event.kind, event.payload, event.text, event.event_id) == ("postback", "TOPIC_FEES", "Học phí", "m_QR9x8y7z")


def test_parse_get_started_postback_with_referral() -> None:
    [event] = messenger.parse(E3)
    assert (event.kind, event.payload, event.text, event.event_id) == ("postback", "GET_STARTED", "Bắt đầu", "m_PB1a2b3c")
    assert event.extra["ref"] == "campaign_tet" and event.extra["ref_source"] == "SHORTLINK"


def test_parse_batch_of_two_entries_skips_the_read_receipt() -> None:
    events = messenger.parse(E4)
    assert [(e.user_id, e.event_id, e.text) for e in events] == [(PSID, "m_Batch001", "Còn chỗ lớp tối không?")]


def test_parse_echo_not_sent_by_the_bot_is_a_takeover_signal() -> None:
    [event] = messenger.parse(E5)
    assert event.kind == "echo"
    assert event.user_id == PSID  # the person, i.e. the echo's recipient
    assert event.event_id == "m_Echo777" and event.text == "Dạ, lớp tối còn 3 chỗ ạ."
    assert event.extra["app_id"] == "1517776481860111"  # a number on the wire, a string here
    assert event.extra["metadata"] == "bot:turn:42"


def test_parse_drops_the_bots_own_echoes() -> None:
    assert messenger.parse(E5, app_id="1517776481860111") == []
    ours = E5.replace(b'"bot:turn:42"', json.dumps(messenger.ECHO_METADATA).encode())
    assert messenger.parse(ours) == []


def test_parse_page_inbox_echo_without_metadata() -> None:
    raw = envelope(item(sender=PAGE, recipient=PSID, message={"is_echo": True, "app_id": 263902037430900, "mid": "m_h1", "text": "Chào anh"}))
    [event] = messenger.parse(raw, app_id="1517776481860111")
    assert (event.kind, event.user_id, event.extra["app_id"], event.extra["metadata"]) == ("echo", PSID, "263902037430900", "")


def test_parse_every_event_of_a_batch_with_standby_and_non_input_events() -> None:
    raw = envelope(
        item(1, message={"mid": "m_1", "text": "một"}),
        item(2, delivery={"mids": ["m_x"], "watermark": 1}),
        item(3, read={"watermark": 2}),
        item(4, reaction={"mid": "m_1", "action": "react", "emoji": "❤"}),
        item(5, referral={"ref": "x", "source": "SHORTLINK", "type": "OPEN_THREAD"}),
        item(6, optin={"ref": "y"}),
        item(7, something_new={"a": 1}),
        item(8, message={"mid": "m_2", "text": "hai"}),
        item(9, sender="111", message={"mid": "m_3", "attachments": [{"type": "image", "payload": {"url": "https://x/y.jpg"}}]}),
        standby=[
            item(10, message={"mid": "m_4", "text": "bốn"}),
            item(11, postback={"mid": "m_5", "title": "Gặp nhân viên"}),  # standby postbacks carry no payload
            item(12, read={"watermark": 3}),
        ],
    )
    events = messenger.parse(raw)
    assert [(e.event_id, e.kind, e.text) for e in events] == [
        ("m_1", "text", "một"),
        ("m_2", "text", "hai"),
        ("m_3", "attachment", ""),
        ("m_4", "text", "bốn"),
        ("m_5", "text", "Gặp nhân viên"),
    ]
    assert events[2].user_id == "111" and events[2].extra["attachment_types"] == "image"
    assert [e.extra.get("standby") for e in events] == [None, None, None, "true", "true"]


def test_parse_several_messaging_items_and_entries() -> None:
    data = json.loads(E4)
    data["entry"][0]["messaging"].append(item(1732500300150, message={"mid": "m_Batch002", "text": "Và lớp sáng?"}))
    data["entry"][1]["messaging"].append(item(1732500300300, sender="6841100000000001", recipient="556677889900112",
                                              message={"mid": "m_P2", "text": "hello"}))
    events = messenger.parse(json.dumps(data).encode())
    assert [(e.event_id, e.extra["page_id"]) for e in events] == [
        ("m_Batch001", PAGE), ("m_Batch002", PAGE), ("m_P2", "556677889900112"),
    ]


@pytest.mark.parametrize(
    "message, types",
    [
        ({"attachments": [{"type": "sticker", "payload": {"sticker_id": 369239263222822}}, {"type": "image", "payload": {"url": "u"}}]}, "sticker,image"),
        ({"sticker_id": 369239263222822}, "sticker"),
        ({"attachments": [{"type": "fallback"}]}, "fallback"),
        ({"attachments": [{"type": "audio", "payload": {"url": "u"}}, {"type": "audio", "payload": {"url": "v"}}]}, "audio"),
        ({"attachments": [{"type": "location", "payload": {"coordinates": {"lat": 21.0, "long": 105.8}}}]}, "location"),
    ],
)
def test_parse_media_is_an_attachment(message: dict[str, Any], types: str) -> None:
    [event] = messenger.parse(envelope(item(message={"mid": "m_a", **message})))
    assert (event.kind, event.text, event.extra["attachment_types"]) == ("attachment", "", types)


def test_parse_shared_link_with_text_is_text() -> None:
    raw = envelope(item(message={"mid": "m_l", "text": "xem https://baohiemxahoi.gov.vn", "attachments": [{"type": "fallback", "payload": None}]}))
    [event] = messenger.parse(raw)
    assert (event.kind, event.text) == ("text", "xem https://baohiemxahoi.gov.vn")


def test_parse_empty_message_is_not_input() -> None:
    assert messenger.parse(envelope(item(message={"mid": "m_e"}))) == []
    assert messenger.parse(envelope(item(message={"mid": "m_e", "text": ""}))) == []


def test_parse_postback_without_mid_gets_a_stable_derived_id() -> None:
    def raw(ts: int, payload: str) -> bytes:
        return envelope(item(ts, postback={"title": "Học phí", "payload": payload}))

    [a] = messenger.parse(raw(1732500200400, "TOPIC_FEES"))
    [b] = messenger.parse(raw(1732500200400, "TOPIC_FEES"))  # a retried delivery
    [c] = messenger.parse(raw(1732500200401, "TOPIC_FEES"))
    [d] = messenger.parse(raw(1732500200400, "HUMAN"))
    assert a.event_id == b.event_id
    assert len({a.event_id, c.event_id, d.event_id}) == 3
    assert a.event_id is not None and len(a.event_id) <= 128
    assert (a.kind, a.payload) == ("postback", "TOPIC_FEES")


def test_parse_keeps_ids_as_strings_and_reads_string_timestamps() -> None:
    data = {"object": "page", "entry": [{"id": 102938475610293, "time": "1732500000500", "messaging": [
        {"sender": {"id": 12345678901234567890}, "recipient": {"id": 102938475610293}, "timestamp": "1732500000123",
         "message": {"mid": "m_n", "text": "số"}}]}]}
    [event] = messenger.parse(json.dumps(data).encode())
    assert event.user_id == "12345678901234567890"  # no float rounding
    assert event.extra["page_id"] == "102938475610293"
    assert event.sent_at is not None and event.sent_at.year == 2024


def test_parse_empty_entry_list() -> None:
    assert messenger.parse(b'{"object":"page","entry":[]}') == []


@pytest.mark.parametrize(
    "raw, words",
    [
        (b"", "not valid JSON"),
        (b"not json", "not valid JSON"),
        (b"\xff\xfe\x00", "not valid JSON"),
        (E1[:-3], "not valid JSON"),
        (b"[" * 200_000 + b"]" * 200_000, "not valid JSON"),  # nesting deep enough to blow the recursion limit
        (b"[]", "not a JSON object"),
        (b"null", "not a JSON object"),
        (b'"page"', "not a JSON object"),
        (b"{}", "unknown object"),
        (b'{"object":"instagram","entry":[]}', "unknown object 'instagram'"),
        (b'{"object":"whatsapp_business_account","entry":[]}', "unknown object"),
        (b'{"object":"page"}', "entry"),
        (b'{"object":"page","entry":{}}', "entry"),
        (b'{"object":"page","entry":[{"time":1}]}', "entry.0.id"),
        (b'{"object":"page","entry":[{"id":"1","messaging":{}}]}', "messaging"),
        (b'{"object":"page","entry":[{"id":"1","messaging":["x"]}]}', "messaging"),
    ],
)
def test_parse_rejects_malformed_bodies(raw: bytes, words: str) -> None:
    with pytest.raises(ValueError, match="messenger webhook") as info:
        messenger.parse(raw)
    assert words in str(info.value)


@pytest.mark.parametrize(
    "body, words",
    [
        (item(message={"text": "no mid"}), "without mid"),
        ({"recipient": {"id": PAGE}, "timestamp": 1, "message": {"mid": "m", "text": "x"}}, "without sender"),
        ({"sender": {}, "recipient": {"id": PAGE}, "message": {"mid": "m", "text": "x"}}, "sender.id"),
        (item(message={"mid": "m", "text": {"nested": 1}}), "message.text"),
        (item(message={"mid": "m", "quick_reply": {}}), "quick_reply.payload"),
        (item(ts=10**20, message={"mid": "m", "text": "x"}), "timestamp out of range"),
        (item(ts="soon", message={"mid": "m", "text": "x"}), "timestamp"),  # type: ignore[arg-type]
        ({"sender": {"id": PSID}, "recipient": {"id": PAGE}, "postback": {"payload": "P"}}, "without mid or timestamp"),
    ],
)
def test_parse_rejects_events_missing_what_they_need(body: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match="messenger webhook") as info:
        messenger.parse(envelope(body))
    assert words in str(info.value)


def _paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, path + (index,))


def test_parse_never_raises_anything_but_value_error() -> None:
    # Replace every node of every sample by every JSON type, and drop every key: only a list or ValueError.
    replacements = [None, 0, -1, 1.5, True, "", "x", [], {}, [None], {"x": 1}, 10**30]
    tried = 0
    for sample in (E1, E2, E3, E4, E5):
        original = json.loads(sample)
        for path in _paths(original):
            if not path:
                continue
            variants = []
            for value in replacements:
                variant = copy.deepcopy(original)
                target = variant
                for step in path[:-1]:
                    target = target[step]
                target[path[-1]] = value
                variants.append(variant)
            if isinstance(path[-1], str):
                variant = copy.deepcopy(original)
                target = variant
                for step in path[:-1]:
                    target = target[step]
                del target[path[-1]]
                variants.append(variant)
            for variant in variants:
                tried += 1
                try:
                    result = messenger.parse(json.dumps(variant).encode())
                except ValueError:
                    continue
                assert isinstance(result, list)
                for event in result:
                    assert isinstance(event.user_id, str) and isinstance(event.text, str)
                    assert isinstance(event.event_id, str) and event.kind in {"text", "postback", "attachment", "echo"}
    assert tried > 500


# --- send against a fake Graph API --------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class FakeGraph:
    """A Graph API stand-in: records every request and answers from a script (default: success)."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    script: list[tuple[Any, ...]] = field(default_factory=list)

    def answer(self, *steps: tuple[Any, ...]) -> None:
        self.script.extend(steps)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        graph: FakeGraph = self.server.graph
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        split = urlsplit(self.path)
        try:
            body: Any = json.loads(raw)
        except ValueError:
            body = raw
        graph.requests.append(Recorded("POST", split.path, parse_qs(split.query), {k.lower(): v for k, v in self.headers.items()}, body))
        step = graph.script.pop(0) if graph.script else ("json", 200, None)
        kind = step[0]
        if kind == "close":  # hang up without a response
            self.close_connection = True
            return
        if kind == "sleep":
            time.sleep(step[1])
            step = ("json", 200, None)
        status, payload = step[1], step[2]
        if payload is None:
            payload = {"recipient_id": body.get("recipient", {}).get("id"), "message_id": f"m_sent_{len(graph.requests)}"}
        data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if not isinstance(payload, str) else "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def graph() -> Iterator[FakeGraph]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    fake = FakeGraph(url=f"http://127.0.0.1:{server.server_address[1]}/v25.0")
    server.graph = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


TOKEN = "EAAGpagetoken123"


def send(base_url: str, msg: OutboundMessage, timeout: float = 5.0, token: str = TOKEN) -> SendResult:
    async def go() -> SendResult:
        async with httpx.AsyncClient(timeout=timeout) as client:
            return await messenger.send(client, base_url, token, msg)

    return asyncio.run(go())


def reply(text: str, *options: Option) -> OutboundMessage:
    return OutboundMessage(channel="messenger", user_id=PSID, text=text, options=options)


def test_send_one_text(graph: FakeGraph) -> None:
    result = send(graph.url, reply("Dạ, mức đóng BHXH tự nguyện là 22% thu nhập."))
    assert result == SendResult(ok=True, platform_message_id="m_sent_1", parts_sent=1)
    [req] = graph.requests
    assert req.path == "/v25.0/me/messages"
    assert req.query == {"access_token": [TOKEN]}
    assert req.headers["content-type"] == "application/json"
    assert req.body == {
        "recipient": {"id": PSID},
        "messaging_type": "RESPONSE",
        "message": {"text": "Dạ, mức đóng BHXH tự nguyện là 22% thu nhập.", "metadata": messenger.ECHO_METADATA},
    }


def test_send_trailing_slash_in_base_url(graph: FakeGraph) -> None:
    assert send(graph.url + "/", reply("ok")).ok
    assert graph.requests[0].path == "/v25.0/me/messages"


def test_send_options_as_quick_replies(graph: FakeGraph) -> None:
    options = [Option("Mức đóng", "fees"), Option("Thủ tục hưởng chế độ thai sản", "maternity")]
    options += [Option(f"Chủ đề {i}", f"t{i}") for i in range(14)]
    assert send(graph.url, reply("Bạn muốn hỏi gì?", *options)).ok
    quick = graph.requests[0].body["message"]["quick_replies"]
    assert len(quick) == 13
    assert quick[0] == {"content_type": "text", "title": "Mức đóng", "payload": "fees"}
    assert quick[1] == {"content_type": "text", "title": "Thủ tục hưởng chế…", "payload": "maternity"}
    assert all(len(q["title"]) <= 20 for q in quick)
    assert [q["payload"] for q in quick][-1] == "t10"


def test_send_long_text_in_sentence_parts_with_options_on_the_last(graph: FakeGraph) -> None:
    sentences = [f"Câu số {i} nói về bảo hiểm xã hội tự nguyện và các quyền lợi liên quan." for i in range(80)]
    text = " ".join(sentences)
    assert len(text) > 4000
    result = send(graph.url, reply(text, Option("Gặp nhân viên", "HUMAN")))
    assert result.ok and result.platform_message_id == f"m_sent_{len(graph.requests)}"
    parts = [r.body["message"]["text"] for r in graph.requests]
    assert len(parts) == 3
    assert all(len(p) <= 2000 for p in parts)
    assert all(p.endswith(".") for p in parts)  # cut at sentence ends
    assert " ".join(parts) == text
    assert ["quick_replies" in r.body["message"] for r in graph.requests] == [False, False, True]
    assert all(r.body["messaging_type"] == "RESPONSE" and r.body["recipient"] == {"id": PSID} for r in graph.requests)


def test_split_text_falls_back_to_words_then_hard_cuts() -> None:
    words = "lương " * 500  # one 3000-character "sentence"
    parts = messenger.split_text(words.strip())
    assert len(parts) == 2 and all(len(p) <= 2000 for p in parts)
    assert " ".join(parts) == words.strip()
    blob = "x" * 4500
    assert [len(p) for p in messenger.split_text(blob)] == [2000, 2000, 500]
    emoji = "😀" * 1500  # 3000 UTF-16 units: never split inside a pair
    parts = messenger.split_text(emoji)
    assert "".join(parts) == emoji and [len(p) for p in parts] == [1000, 500]
    assert messenger.split_text("Một.\n\nHai.") == ["Một.\n\nHai."]
    assert messenger.split_text("   ") == []


def test_send_empty_text_sends_nothing(graph: FakeGraph) -> None:
    result = send(graph.url, reply("  "))
    assert not result.ok and not result.retryable and "empty" in (result.error or "")
    assert graph.requests == []


@pytest.mark.parametrize("status", [500, 502, 503])
def test_send_server_errors_are_retryable(graph: FakeGraph, status: int) -> None:
    graph.answer(("json", status, {"error": {"message": "An unexpected error has occurred.", "code": 1, "fbtrace_id": "A"}}))
    result = send(graph.url, reply("xin chào"))
    assert result.ok is False and result.retryable is True
    assert f"HTTP {status}" in (result.error or "")


def test_send_non_json_error_body(graph: FakeGraph) -> None:
    graph.answer(("json", 502, "<html>Bad Gateway</html>"))
    result = send(graph.url, reply("xin chào"))
    assert result.retryable and result.error == "messenger: HTTP 502: <html>Bad Gateway</html>"


@pytest.mark.parametrize(
    "status, error",
    [
        (429, {"message": "Too many requests", "code": 4}),
        (400, {"message": "(#4) Application request limit reached", "type": "OAuthException", "code": 4}),
        (400, {"message": "(#613) Calls to this api have exceeded the rate limit.", "type": "OAuthException", "code": 613}),
        (400, {"message": "(#32) Page request limit reached", "code": 32}),
        (400, {"message": "Temporary send message failure. Please try again later.", "code": 1200}),
        (400, {"message": "An unexpected error has occurred. Please retry your request later.", "code": 2, "is_transient": True}),
        (400, {"message": "Something new", "code": 9999, "is_transient": True}),
    ],
)
def test_send_rate_limits_and_transient_errors_are_retryable(graph: FakeGraph, status: int, error: dict[str, Any]) -> None:
    graph.answer(("json", status, {"error": error}))
    result = send(graph.url, reply("xin chào"))
    assert result.ok is False and result.retryable is True
    assert f"messenger {error['code']}" in (result.error or "")


@pytest.mark.parametrize(
    "error, label",
    [
        ({"message": "(#551) This person isn't available right now.", "type": "OAuthException", "code": 551, "error_subcode": 1545041}, "551/1545041"),
        ({"message": "(#10) This message is sent outside of allowed window.", "type": "OAuthException", "code": 10, "error_subcode": 2018278}, "10/2018278"),
        ({"message": "(#100) No matching user found", "type": "OAuthException", "code": 100, "error_subcode": 2018001}, "100/2018001"),
        ({"message": "(#100) Length of param message[quick_replies][1][title] must be less than or equal to 20", "code": 100}, "100"),
        ({"message": "Error validating access token: The session has been invalidated.", "type": "OAuthException", "code": 190, "error_subcode": 460}, "190/460"),
        ({"message": "(#200) Requires pages_messaging permission", "code": 200}, "200"),
    ],
)
def test_send_permanent_errors_record_code_and_message(graph: FakeGraph, error: dict[str, Any], label: str) -> None:
    graph.answer(("json", 400, {"error": {**error, "fbtrace_id": "AbC"}}))
    result = send(graph.url, reply("xin chào"))
    assert result.ok is False and result.retryable is False and result.token_expired is False
    assert result.error == f"messenger {label}: {error['message']} (HTTP 400)"


def test_send_timeout_is_retryable(graph: FakeGraph) -> None:
    graph.answer(("sleep", 1.0))
    started = time.monotonic()
    result = send(graph.url, reply("xin chào"), timeout=0.2)
    assert time.monotonic() - started < 0.9
    assert result.ok is False and result.retryable is True and "timeout" in (result.error or "")


def test_send_closed_connection_is_retryable(graph: FakeGraph) -> None:
    graph.answer(("close",))
    result = send(graph.url, reply("xin chào"))
    assert result.ok is False and result.retryable is True and "network error" in (result.error or "")
    assert len(graph.requests) == 1


def test_send_connection_refused_is_retryable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the block ends: nobody listens there
    result = send(f"http://127.0.0.1:{port}/v25.0", reply("xin chào"))
    assert result.ok is False and result.retryable is True and "ConnectError" in (result.error or "")


def test_send_stops_at_the_first_failed_part_and_says_how_far_it_got(graph: FakeGraph) -> None:
    text = ("Câu dài về chế độ hưu trí và cách tính lương hưu hằng tháng. " * 40).strip()
    graph.answer(("json", 200, None), ("json", 500, {"error": {"message": "boom", "code": 2}}))
    result = send(graph.url, reply(text, Option("Khác", "OTHER")))
    assert len(graph.requests) == 2
    assert result.ok is False and result.retryable is True
    assert (result.error or "").startswith("after 1 of 2 parts: messenger 2: boom")
    assert result.parts_sent == 1
    # the retry resumes at the part that failed: the first is never sent twice
    graph.answer(("json", 200, {"message_id": "m_2"}))
    again = send(graph.url, replace(reply(text, Option("Khác", "OTHER")), skip_parts=result.parts_sent))
    assert again.ok and again.parts_sent == 2
    assert len(graph.requests) == 3
    assert graph.requests[2].body["message"]["text"] == graph.requests[1].body["message"]["text"]
    assert "quick_replies" in graph.requests[2].body["message"]


@pytest.mark.parametrize(
    "status, body, retryable",
    [
        (400, {"error": {"message": "odd", "code": "613"}}, True),  # a code as a string
        (400, {"error": {"message": "odd", "code": {"nested": 1}}}, False),
        (400, {"error": "just a string"}, False),
        (400, [1, 2, 3], False),
        (403, {}, False),
    ],
)
def test_send_odd_error_bodies_are_classified_not_raised(graph: FakeGraph, status: int, body: Any, retryable: bool) -> None:
    graph.answer(("json", status, body))
    result = send(graph.url, reply("xin chào"))
    assert result.ok is False and result.retryable is retryable and f"HTTP {status}" in (result.error or "")


def test_send_success_without_a_message_id(graph: FakeGraph) -> None:
    graph.answer(("json", 200, "OK"))
    assert send(graph.url, reply("xin chào")) == SendResult(ok=True, platform_message_id=None, parts_sent=1)


def test_send_never_puts_the_token_in_an_error(graph: FakeGraph) -> None:
    graph.answer(("json", 400, {"error": {"message": f"Invalid token {TOKEN}", "code": 190}}))
    result = send(graph.url, reply("xin chào"))
    assert TOKEN not in (result.error or "") and "***" in (result.error or "")


# --- Messenger Profile --------------------------------------------------------------------------


def test_profile_payload() -> None:
    payload = messenger.profile_payload(
        "Xin chào {{user_first_name}}! Tôi trả lời câu hỏi về BHXH, BHYT.",
        [Option("Tra cứu quá trình đóng BHXH tự nguyện", "TOPIC_LOOKUP"), Option("Gặp nhân viên", "HUMAN")],
        links=[Option("Cổng dịch vụ công", "https://dichvucong.baohiemxahoi.gov.vn")],
    )
    assert payload == {
        "get_started": {"payload": "GET_STARTED"},
        "greeting": [{"locale": "default", "text": "Xin chào {{user_first_name}}! Tôi trả lời câu hỏi về BHXH, BHYT."}],
        "persistent_menu": [{
            "locale": "default",
            "composer_input_disabled": False,
            "call_to_actions": [
                {"type": "postback", "title": "Tra cứu quá trình đóng BHXH…", "payload": "TOPIC_LOOKUP"},
                {"type": "postback", "title": "Gặp nhân viên", "payload": "HUMAN"},
                {"type": "web_url", "title": "Cổng dịch vụ công", "url": "https://dichvucong.baohiemxahoi.gov.vn"},
            ],
        }],
    }
    assert len(payload["persistent_menu"][0]["call_to_actions"][0]["title"]) <= 30
    json.dumps(payload)  # serialisable as is


def test_profile_payload_per_locale() -> None:
    payload = messenger.profile_payload(
        {"default": "Xin chào!", "en_US": "Hello!"},
        {"default": [Option("Học phí", "FEES")], "en_US": [Option("Fees", "FEES")]},
        get_started_payload="START",
        composer_input_disabled=True,
    )
    assert payload["get_started"] == {"payload": "START"}
    assert payload["greeting"] == [{"locale": "default", "text": "Xin chào!"}, {"locale": "en_US", "text": "Hello!"}]
    assert [(m["locale"], m["composer_input_disabled"], m["call_to_actions"][0]["title"]) for m in payload["persistent_menu"]] == [
        ("default", True, "Học phí"), ("en_US", True, "Fees"),
    ]


@pytest.mark.parametrize(
    "greeting, menu, words",
    [
        ({"en_US": "Hello"}, [Option("a", "A")], "default"),
        ("Xin chào", {"vi_VN": [Option("a", "A")]}, "default"),
        ("x" * 161, [Option("a", "A")], "160"),
        ("Xin chào", [Option(f"m{i}", f"M{i}") for i in range(21)], "20"),
    ],
)
def test_profile_payload_rejects_what_meta_would(greeting: Any, menu: Any, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        messenger.profile_payload(greeting, menu)


def test_send_with_a_message_tag_uses_message_tag_on_every_part(graph: FakeGraph) -> None:
    # A staff reply 24 h - 7 days after the person's last message goes out with the HUMAN_AGENT tag.
    long = " ".join(f"Câu số {i} của cán bộ trả lời." for i in range(120))
    msg = replace(reply(long), tag="HUMAN_AGENT")
    assert send(graph.url, msg).ok
    assert len(graph.requests) > 1
    for req in graph.requests:
        assert req.body["messaging_type"] == "MESSAGE_TAG" and req.body["tag"] == "HUMAN_AGENT"
        assert req.body["message"]["metadata"] == messenger.ECHO_METADATA  # its echo is still the bot's own


def test_send_without_a_tag_is_a_plain_response(graph: FakeGraph) -> None:
    assert send(graph.url, reply("Dạ, em chào anh.")).ok
    assert graph.requests[0].body["messaging_type"] == "RESPONSE" and "tag" not in graph.requests[0].body
