"""The normaliser: Vietnamese chat text → matching keys (table-driven)."""
from __future__ import annotations

import unicodedata

import pytest

from intents.normalize import canonical_tone, detect_language, fold, normalize


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("hoà", "hòa"), ("thuỷ", "thủy"), ("qúy", "quý"), ("gìa", "già"), ("lựơng", "lượng"),
        ("khoẻ", "khỏe"), ("uỷ", "ủy"), ("hoá đơn", "hóa đơn"),
    ],
)
def test_old_and_new_tone_placement_give_one_key(a: str, b: str) -> None:
    assert normalize(a).toned == normalize(b).toned
    assert normalize(a).fold == normalize(b).fold


@pytest.mark.parametrize("word", ["người", "được", "khuyến", "quyền", "giữa", "thuở", "nghiệp", "ưu"])
def test_canonical_tone_is_idempotent_and_keeps_correct_words(word: str) -> None:
    assert canonical_tone(word) == word
    assert canonical_tone(canonical_tone(word)) == canonical_tone(word)


def test_nfd_input_matches_nfc() -> None:
    nfc = "Bảo hiểm xã hội một lần"
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    assert normalize(nfd).toned == normalize(nfc).toned
    assert normalize(nfd).fold_key == "bao hiem xa hoi mot lan"


@pytest.mark.parametrize(("text", "folded"), [("Đặng đóng đủ", "dang dong du"), ("ĐƯỢC", "duoc"), ("ưu đãi", "uu dai")])
def test_fold_maps_d_stroke_and_strips_marks(text: str, folded: str) -> None:
    assert fold(text.lower()) == folded


@pytest.mark.parametrize(
    ("text", "fold_key"),
    [
        ("đcccc ko", "duoc khong"),
        ("dc k", "duoc khong"),
        ("rút bhxh 1 lần", "rut bao hiem xa hoi mot lan"),
        ("rut bhxh 1lan", "rut bao hiem xa hoi mot lan"),
        ("tnld thì sao", "tai nan lao dong sao"),
        ("bn tiền", "bao nhieu tien"),
        ("tính ntn", "tinh nhu the nao"),
        ("mức hưởng j", "muc huong gi"),
        ("bhyt bhtn", "bao hiem y te bao hiem that nghiep"),
        ("dk huong ts", "dieu kien huong thai san"),
        ("có dk ko", "co duoc khong"),
        ("okkk", "ok"),
        ("khônggg", "khong"),
    ],
)
def test_abbreviations_and_repeats(text: str, fold_key: str) -> None:
    assert normalize(text).fold_key == fold_key


@pytest.mark.parametrize(
    ("text", "fold_key"),
    [
        ("lương 500k", "luong 500 nghin"),  # k after a number is a thousand, not "không"
        ("500 k một tháng", "500 nghin mot thang"),
        ("lương 5tr", "luong 5 trieu"),
        ("k biết", "khong biet"),
    ],
)
def test_k_after_a_number_means_thousand(text: str, fold_key: str) -> None:
    assert normalize(text).fold_key == fold_key


def test_real_words_are_never_expanded() -> None:
    assert normalize("thẻ bhyt bị hong").fold_key == "the bao hiem y te bi hong"  # hỏng, not không
    assert "vay" in normalize("vay tiền").fold  # a loan, not "vậy"


def test_filler_removal_is_accent_aware() -> None:
    # "hỏi" is a filler, "hội" in "xã hội" is not, although both fold to "hoi".
    assert normalize("cho em hỏi bảo hiểm xã hội ạ").fold_key == "bao hiem xa hoi"


def test_tn_reads_from_the_word_before_it() -> None:
    assert normalize("bhxh tn đóng bn").fold_key == normalize("bhxh tự nguyện đóng bn").fold_key
    assert normalize("hưởng tn mấy tháng").fold_key == normalize("hưởng thất nghiệp mấy tháng").fold_key
    assert normalize("bh tn").fold_key == normalize("bhtn").fold_key
    assert normalize("đóng tn 20 năm").fold_key == "dong tn 20 nam"  # either: left as typed


def test_unaccented_toi_da_is_a_maximum_not_a_filler() -> None:
    assert normalize("muc dong toi da").fold_key == normalize("mức đóng tối đa").fold_key == "muc dong toi da"
    assert normalize("da dong du chua a").fold_key == "dong du chua"  # "dạ" / "đã" still dropped


def test_punctuation_emoji_and_urls_are_dropped() -> None:
    assert normalize("Thai sản??? 😀😀 https://example.com/x !!!").fold_key == "thai san"
    assert normalize("😀😀").fold == ()
    assert normalize("...").fold == ()


def test_upper_case() -> None:
    assert normalize("NGHỈ THAI SẢN").fold_key == normalize("nghỉ thai sản").fold_key


@pytest.mark.parametrize(
    ("text", "lang"),
    [
        ("What maternity benefits can I get?", "en"),
        ("How do I claim unemployment insurance?", "en"),
        ("nghi thai san bao lau", "vi"),
        ("Nghỉ thai sản bao lâu", "vi"),
        ("bhxh 1 lan", "vi"),
        ("hi", "en"),
        ("", "vi"),
    ],
)
def test_language_detection(text: str, lang: str) -> None:
    assert detect_language(text) == lang
