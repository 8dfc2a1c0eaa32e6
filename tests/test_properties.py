"""Property-based tests (hypothesis): the normaliser, both webhook parsers and mask_pii hold their
promises on generated input, not only on the examples someone thought of. Example counts are
modest so that the suite stays fast; no example database is written (the runs are reproducible
from the printed seed)."""
from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from app.privacy import mask_pii
from intents.normalize import (
    QUALITY_VOWELS, TONE_MARKS, VOWELS, canonical_tone, clean, detect_language, fold, normalize, question_key,
)
from webhooks import messenger, zalo
from webhooks.base import InboundEvent

FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# --- the normaliser ------------------------------------------------------------------------------

VI_LOWER = "aàáảãạăằắẳẵặâầấẩẫậbcdđeèéẻẽẹêềếểễệghiìíỉĩịklmnoòóỏõọôồốổỗộơờớởỡợpqrstuùúủũụưừứửữựvxyỳýỷỹỵ"
VI_TEXT = st.text(alphabet=st.sampled_from(list(VI_LOWER + VI_LOWER.upper() + "0123456789 .,?!%k")), max_size=80)
VI_WORD = st.text(alphabet=st.sampled_from(list(VI_LOWER)), min_size=1, max_size=7)
LANG = st.sampled_from(["vi", "en"])


@FAST
@given(text=st.text(max_size=200), lang=LANG, drop=st.booleans())
def test_normalize_never_raises_and_its_fold_has_no_marks(text: str, lang: str, drop: bool) -> None:
    n = normalize(text, drop_fillers=drop, lang=lang)
    assert len(n.toned) == len(n.fold) and all(n.fold) and all(n.toned)
    for token in n.fold:
        assert "đ" not in token and "Đ" not in token
        assert not any(unicodedata.combining(c) for c in token)
    assert detect_language(text) in ("vi", "en")
    assert isinstance(question_key(text, lang), str)


@FAST
@given(text=VI_TEXT, lang=LANG)
def test_the_fold_of_vietnamese_is_ascii(text: str, lang: str) -> None:
    assert fold(text).isascii()
    assert normalize(text, lang=lang).fold_key.isascii()


@FAST
@given(text=st.text(max_size=120))
def test_fold_clean_and_canonical_tone_are_idempotent(text: str) -> None:
    assert fold(fold(text)) == fold(text)
    assert clean(clean(text)) == clean(text)
    assert canonical_tone(canonical_tone(text)) == canonical_tone(text)


SYLLABLE_BASES = st.builds(
    lambda onset, nucleus, coda: onset + nucleus + coda,
    st.sampled_from(["", "b", "ch", "d", "đ", "g", "gi", "h", "kh", "l", "m", "ng", "nh", "qu", "th", "tr", "x"]),
    st.sampled_from(["a", "ă", "â", "e", "ê", "i", "o", "ô", "ơ", "u", "ư", "y", "oa", "oe", "uy", "uê", "ai", "ao",
                     "au", "ay", "ây", "eo", "ia", "iê", "oi", "ôi", "ơi", "ua", "uô", "ưa", "ươ", "ưu", "oai", "uya",
                     "uyê", "ươi", "iêu", "yê"]),
    st.sampled_from(["", "c", "ch", "m", "n", "ng", "nh", "p", "t"]),
)


@FAST
@given(base=SYLLABLE_BASES, tone=st.sampled_from(sorted(TONE_MARKS)), data=st.data())
def test_where_the_tone_mark_was_typed_does_not_matter(base: str, tone: str, data: st.DataObject) -> None:
    """hoà = hòa, thuỷ = thủy, qúy = quý: the tone on any vowel of the syllable gives one key."""
    spots = [i for i, ch in enumerate(base) if ch in VOWELS or ch in QUALITY_VOWELS]
    assume(spots)
    i, j = data.draw(st.sampled_from(spots)), data.draw(st.sampled_from(spots))

    def toned(at: int) -> str:
        return unicodedata.normalize("NFC", unicodedata.normalize("NFD", base[: at + 1]) + tone + base[at + 1:])

    assert canonical_tone(toned(i)) == canonical_tone(toned(j))
    assert question_key(f"tôi {toned(i)} bhxh", "vi") == question_key(f"tôi {toned(j)} bhxh", "vi")


@FAST
@given(text=VI_TEXT, lang=LANG)
def test_question_key_ignores_case_and_unicode_form(text: str, lang: str) -> None:
    key = question_key(text, lang)
    assert question_key(text, lang) == key  # stable
    assert question_key(text.upper(), lang) == key
    assert question_key(unicodedata.normalize("NFD", text), lang) == key


@FAST
@given(words=st.lists(VI_WORD, min_size=1, max_size=8),
       gaps=st.lists(st.sampled_from([" ", "  ", "\n", "\t", " , ", "? ", "... "]), min_size=8, max_size=8))
def test_question_key_ignores_spacing_and_punctuation(words: list[str], gaps: list[str]) -> None:
    spaced = "".join(w + g for w, g in zip(words, gaps, strict=False))
    assert question_key(spaced, "vi") == question_key(" ".join(words), "vi")


# --- mask_pii ------------------------------------------------------------------------------------

# A run of 9-12 digits not followed by a letter or digit (one glued to letters on its right is a
# part of a token, e.g. the hex of an id, and is left alone by design: app/privacy.py).
PERSONAL_RUN = re.compile(r"(?<![0-9])[0-9]{9,12}(?!\w)")
WORDS = st.text(alphabet=st.sampled_from(list("abcđơư ,:;!?()\n")), max_size=20)


def personal_number() -> st.SearchStrategy[str]:
    """A citizen ID, old ID, social insurance code or phone, as people write them."""
    plain = st.integers(9, 12).flatmap(lambda n: st.text(alphabet="0123456789", min_size=n, max_size=n))
    phone = st.text(alphabet="0123456789", min_size=9, max_size=9).flatmap(
        lambda d: st.sampled_from([f"0{d}", f"0{d[:3]} {d[3:6]} {d[6:]}", f"0{d[:3]}.{d[3:6]}.{d[6:]}",
                                   f"+84 {d[:2]} {d[2:5]} {d[5:]}", f"84{d}", f"0{d[:2]}-{d[2:5]}-{d[5:]}"]))
    return plain | phone


@FAST
@given(before=WORDS, number=personal_number(), after=WORDS)
def test_a_personal_number_standing_apart_never_survives_masking(before: str, number: str, after: str) -> None:
    masked = mask_pii(f"{before} {number} {after}")
    assert not PERSONAL_RUN.search(masked)
    digits = re.sub(r"\D", "", number)
    assert "•" * (len(digits) - 3) + digits[-3:] in masked  # the last three digits stay, to tell numbers apart
    assert mask_pii(masked) == masked  # masking twice changes nothing more


@FAST
@given(text=st.text(max_size=120))
def test_mask_pii_never_raises_and_keeps_text_without_digits_or_at(text: str) -> None:
    masked = mask_pii(text)
    if not any(c.isdigit() for c in text) and "@" not in text:
        assert masked == text


@settings(max_examples=300, deadline=None, database=None)
@given(text=st.text(alphabet=st.sampled_from(list("0123456789 .-+:,abđ\n")), max_size=60))
@example(text="sdt0912345678")  # the cases found so far: the test fails on them for certain
@example(text="cccd 079123456789 3 người")
@example(text="+000000000")
def test_no_9_to_12_digit_run_survives_masking(text: str) -> None:
    assert not PERSONAL_RUN.search(mask_pii(text))


# --- the webhook parsers: anything in, only the declared error out ---------------------------------

JSON_LEAF = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=12)


def json_like(keys: list[str]) -> st.SearchStrategy[Any]:
    """Arbitrary JSON values whose object keys are often ones the parser reads."""
    key = st.sampled_from(keys) | st.text(max_size=6)
    return st.recursive(JSON_LEAF, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(key, inner, max_size=4),
                        max_leaves=12)


def maybe(valid: st.SearchStrategy[Any], junk: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | valid | junk  # mostly well formed, so the parser gets past its first checks


MESSENGER_KEYS = ["object", "entry", "id", "time", "messaging", "standby", "sender", "recipient", "timestamp",
                  "message", "postback", "mid", "text", "is_echo", "app_id", "metadata", "quick_reply", "payload",
                  "attachments", "type", "sticker_id", "title", "referral", "ref", "source"]
M_JUNK = json_like(MESSENGER_KEYS)
M_ID = st.text(alphabet="0123456789", min_size=1, max_size=16) | st.integers(0, 2**63)
M_PARTY = maybe(st.fixed_dictionaries({"id": M_ID}), M_JUNK)
M_MESSAGE = maybe(st.fixed_dictionaries({}, optional={
    "mid": maybe(st.text(min_size=1, max_size=20), M_JUNK), "text": maybe(st.text(max_size=30), M_JUNK),
    "is_echo": maybe(st.booleans(), M_JUNK), "app_id": maybe(M_ID, M_JUNK), "metadata": maybe(st.just("vssbot"), M_JUNK),
    "quick_reply": maybe(st.fixed_dictionaries({"payload": st.text(max_size=20)}), M_JUNK),
    "attachments": maybe(st.lists(st.fixed_dictionaries({"type": st.sampled_from(["image", "audio", "file"])}), max_size=2), M_JUNK),
    "sticker_id": maybe(M_ID, M_JUNK),
}), M_JUNK)
M_POSTBACK = maybe(st.fixed_dictionaries({}, optional={
    "mid": st.text(max_size=20), "title": maybe(st.text(max_size=20), M_JUNK), "payload": maybe(st.text(max_size=20), M_JUNK),
    "referral": maybe(st.fixed_dictionaries({"ref": st.text(max_size=8), "source": st.text(max_size=8)}), M_JUNK),
}), M_JUNK)
M_ITEM = maybe(st.fixed_dictionaries({}, optional={
    "sender": M_PARTY, "recipient": M_PARTY, "timestamp": maybe(st.integers(-(2**64), 2**64), M_JUNK),
    "message": M_MESSAGE, "postback": M_POSTBACK,
}), M_JUNK)
M_ENTRY = maybe(st.fixed_dictionaries({"id": maybe(M_ID, M_JUNK)}, optional={
    "time": M_JUNK, "messaging": maybe(st.lists(M_ITEM, max_size=3), M_JUNK), "standby": maybe(st.lists(M_ITEM, max_size=2), M_JUNK),
}), M_JUNK)
M_BODY = maybe(st.fixed_dictionaries({"object": maybe(st.just("page"), M_JUNK), "entry": maybe(st.lists(M_ENTRY, max_size=3), M_JUNK)}),
               M_JUNK)


def check_events(events: list[InboundEvent], channel: str) -> None:
    for e in events:
        assert isinstance(e, InboundEvent) and e.channel == channel
        assert isinstance(e.user_id, str) and e.user_id and isinstance(e.text, str)
        assert e.event_id and isinstance(e.event_id, str)
        assert e.kind in {"text", "postback", "attachment", "follow", "chatnow", "echo"}
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.extra.items())


@FAST
@given(body=M_BODY)
def test_messenger_parse_raises_only_value_error(body: Any) -> None:
    try:
        events = messenger.parse(json.dumps(body).encode())
    except ValueError:
        return
    check_events(events, "messenger")


@FAST
@given(raw=st.binary(max_size=200) | st.text(max_size=100).map(str.encode))
def test_both_parsers_take_any_bytes(raw: bytes) -> None:
    for parse, channel in ((messenger.parse, "messenger"), (zalo.parse, "zalo")):
        try:
            events = parse(raw)
        except ValueError:
            continue
        check_events(events, channel)


ZALO_KEYS = ["event_name", "app_id", "oa_id", "user_id", "user_id_by_app", "timestamp", "source", "sender",
             "recipient", "follower", "message", "id", "admin_id", "msg_id", "text", "attachments", "type", "payload",
             "url", "quote_msg_id"]
Z_JUNK = json_like(ZALO_KEYS)
Z_EVENT_NAMES = ["user_send_text", "user_send_image", "user_send_sticker", "user_send_file", "user_send_location",
                 "oa_send_text", "oa_send_image", "follow", "unfollow", "user_click_chatnow", "user_seen_message",
                 "anonymous_send_text", "user_send_gif", "something_new"]
Z_PARTY = maybe(st.fixed_dictionaries({}, optional={"id": maybe(M_ID, Z_JUNK), "admin_id": M_ID}), Z_JUNK)
Z_BODY = maybe(st.fixed_dictionaries({"event_name": maybe(st.sampled_from(Z_EVENT_NAMES), Z_JUNK)}, optional={
    "app_id": M_ID, "oa_id": M_ID, "user_id": maybe(M_ID, Z_JUNK), "user_id_by_app": M_ID,
    "timestamp": maybe(st.integers(0, 2**45).map(str), Z_JUNK), "source": st.text(max_size=10),
    "sender": Z_PARTY, "recipient": Z_PARTY, "follower": Z_PARTY,
    "message": maybe(st.fixed_dictionaries({}, optional={
        "msg_id": maybe(st.text(min_size=1, max_size=20), Z_JUNK), "text": maybe(st.text(max_size=30), Z_JUNK),
        "attachments": maybe(st.lists(st.fixed_dictionaries({"type": st.text(max_size=8), "payload": Z_JUNK}), max_size=2), Z_JUNK),
    }), Z_JUNK),
}), Z_JUNK)


@FAST
@given(body=Z_BODY)
def test_zalo_parse_raises_only_value_error(body: Any) -> None:
    try:
        events = zalo.parse(json.dumps(body).encode())
    except zalo.UnsupportedEvent:
        assert isinstance(body, dict) and body["event_name"] not in zalo.IGNORED_EVENTS
        return
    except ValueError:
        return
    check_events(events, "zalo")
    assert len(events) <= 1  # one event per POST


# --- the webhook parsers: valid events come out right ---------------------------------------------

PSID = st.from_regex(r"[1-9][0-9]{4,16}", fullmatch=True)  # no leading zero: also sent as a JSON number
MID = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=40).map(lambda s: "m_" + s)
SAID = st.text(min_size=1, max_size=60).filter(str.strip)
MS = st.integers(1_000_000_000_000, 4_000_000_000_000)  # epoch milliseconds, 2001 to 2096


@st.composite
def messenger_item(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One messaging item and the event it must give (None: not input)."""
    user, page, ts, mid = draw(PSID), draw(PSID), draw(MS), draw(MID)
    base = {"sender": {"id": user}, "recipient": {"id": page}, "timestamp": ts}
    shape = draw(st.sampled_from(["text", "quick_reply", "postback", "attachment", "own_echo", "staff_echo", "read"]))
    if shape == "text":
        text = draw(SAID)
        return {**base, "message": {"mid": mid, "text": text}}, {"user_id": user, "kind": "text", "text": text, "event_id": mid}
    if shape == "quick_reply":
        title, payload = draw(SAID), draw(SAID)
        return ({**base, "message": {"mid": mid, "text": title, "quick_reply": {"payload": payload}}},
                {"user_id": user, "kind": "postback", "text": title, "payload": payload, "event_id": mid})
    if shape == "postback":
        title, payload = draw(SAID), draw(SAID)
        return ({**base, "postback": {"mid": mid, "title": title, "payload": payload}},
                {"user_id": user, "kind": "postback", "text": title, "payload": payload, "event_id": mid})
    if shape == "attachment":
        kind = draw(st.sampled_from(["image", "audio", "video", "file"]))
        return ({**base, "message": {"mid": mid, "attachments": [{"type": kind, "payload": {"url": "https://x/y"}}]}},
                {"user_id": user, "kind": "attachment", "text": "", "event_id": mid})
    echo = {"sender": {"id": page}, "recipient": {"id": user}, "timestamp": ts}
    if shape == "own_echo":
        return {**echo, "message": {"mid": mid, "is_echo": True, "metadata": "vssbot", "text": draw(SAID)}}, None
    if shape == "staff_echo":
        text = draw(SAID)
        return ({**echo, "message": {"mid": mid, "is_echo": True, "app_id": 263902037430900, "text": text}},
                {"user_id": user, "kind": "echo", "text": text, "event_id": mid})
    return {**base, "read": {"watermark": ts}}, None


@FAST
@given(items=st.lists(messenger_item(), min_size=1, max_size=5), page=PSID, numeric_ids=st.booleans())
def test_valid_messenger_events_parse_to_the_right_inbound_events(
        items: list[tuple[dict[str, Any], dict[str, Any] | None]], page: str, numeric_ids: bool) -> None:
    messaging = [item for item, _ in items]
    if numeric_ids:  # Meta's ids are strings, but a number must keep its exact digits all the same
        for item in messaging:
            item["sender"]["id"] = int(item["sender"]["id"])
    body = {"object": "page", "entry": [{"id": page, "time": 1, "messaging": messaging}]}
    events = messenger.parse(json.dumps(body, ensure_ascii=True).encode())
    expected = [want for _, want in items if want is not None]
    assert len(events) == len(expected)
    for event, want in zip(events, expected, strict=True):
        assert event.channel == "messenger" and event.extra["page_id"] == page
        for field, value in want.items():
            assert getattr(event, field) == value, field
        assert event.sent_at is not None and event.sent_at.tzinfo is not None


@st.composite
def zalo_event(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """One Zalo event and the InboundEvent fields it must give (None: not input)."""
    user, oa, ts, mid = draw(PSID), draw(PSID), str(draw(MS)), draw(MID)
    base = {"app_id": "3608465248940903967", "timestamp": ts}
    shape = draw(st.sampled_from(["text", "button", "image", "follow", "oa_text", "seen"]))
    if shape == "text":
        text = draw(SAID.filter(lambda s: not s.strip().startswith("#")))
        return ({**base, "event_name": "user_send_text", "sender": {"id": user}, "recipient": {"id": oa},
                 "message": {"msg_id": mid, "text": text}},
                {"user_id": user, "kind": "text", "text": unicodedata.normalize("NFC", text), "event_id": mid})
    if shape == "button":
        payload = draw(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_:0123456789", min_size=1, max_size=30))
        return ({**base, "event_name": "user_send_text", "sender": {"id": user}, "recipient": {"id": oa},
                 "message": {"msg_id": mid, "text": "#" + payload}},
                {"user_id": user, "kind": "postback", "payload": payload, "event_id": mid})
    if shape == "image":
        return ({**base, "event_name": "user_send_image", "sender": {"id": user}, "recipient": {"id": oa},
                 "message": {"msg_id": mid, "attachments": [{"type": "image", "payload": {"url": "https://z/1.jpg"}}]}},
                {"user_id": user, "kind": "attachment", "event_id": mid})
    if shape == "follow":
        return ({**base, "event_name": "follow", "oa_id": oa, "follower": {"id": user}, "source": "oa_profile"},
                {"user_id": user, "kind": "follow", "event_id": f"follow:{user}:{ts}"})
    if shape == "oa_text":
        text = draw(SAID)
        return ({**base, "event_name": "oa_send_text", "sender": {"id": oa}, "recipient": {"id": user},
                 "message": {"msg_id": mid, "text": text}},
                {"user_id": user, "kind": "echo", "text": unicodedata.normalize("NFC", text), "event_id": mid})
    return {**base, "event_name": "user_seen_message", "sender": {"id": user}, "recipient": {"id": oa},
            "message": {"msg_ids": [mid]}}, None


@FAST
@given(case=zalo_event(), ascii_only=st.booleans())
def test_valid_zalo_events_parse_to_the_right_inbound_event(
        case: tuple[dict[str, Any], dict[str, Any] | None], ascii_only: bool) -> None:
    body, want = case
    events = zalo.parse(json.dumps(body, ensure_ascii=ascii_only).encode())
    if want is None:
        assert events == []
        return
    (event,) = events
    assert event.channel == "zalo"
    for field, value in want.items():
        assert getattr(event, field) == value, field
    assert event.sent_at == datetime.fromtimestamp(int(body["timestamp"]) / 1000, tz=UTC)


@FEW
@given(name=st.text(min_size=1, max_size=30).filter(
    lambda n: n not in zalo.IGNORED_EVENTS and not n.startswith(("user_send_", "oa_send_", *zalo.IGNORED_PREFIXES))
    and n not in ("follow", "user_click_chatnow")))
def test_an_unknown_zalo_event_is_the_adapters_own_unsupported_error(name: str) -> None:
    with pytest.raises(zalo.UnsupportedEvent):
        zalo.parse(json.dumps({"event_name": name, "timestamp": "1732500000000"}).encode())
