"""Vietnamese chat text → matching keys: canonical tones, a diacritic-free fold, teencode expanded.

Follows ../shared/reference/matching.md §1 and §6: NFC first; numbers with `k`/`tr` rewritten
before the abbreviation lookup; runs of repeated letters collapsed; abbreviations expanded on
whole ASCII tokens only (so that real words such as "hong" or "vay" are never rewritten); tone
marks re-placed by one fixed rule so that hoà = hòa, thuỷ = thủy, qúy = quý; and a fold key with
đ→d and every mark removed, in which accented and unaccented messages meet.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

TONE_MARKS = {"\u0300", "\u0301", "\u0303", "\u0309", "\u0323"}  # huyền sắc ngã hỏi nặng
VOWELS = set("aăâeêioôơuưy")
QUALITY_VOWELS = set("ăâêôơư")

_URL = re.compile(r"(https?://|www\.)\S+", re.IGNORECASE)
_NUM_K = re.compile(r"(\d+(?:[.,]\d+)?)\s*k\b")
_NUM_TR = re.compile(r"(\d+(?:[.,]\d+)?)\s*(?:tr|triệu|trieu)\b")
_ONE_TIME = re.compile(r"\b1\s*(lần|lan)\b")
_REPEAT = re.compile(r"([^\W\d_])\1{2,}")
_TOKEN = re.compile(r"[^\W_]+")

# Chat abbreviations and teencode, looked up on whole lower-case tokens as typed (ASCII, or the
# đ-forms listed). Values are the full Vietnamese words. See matching.md §1.6.
ABBREVIATIONS: dict[str, str] = {
    # negation and question words
    "ko": "không", "k": "không", "kh": "không", "khg": "không", "kg": "không", "kô": "không",
    "khôg": "không", "hok": "không", "hông": "không", "hổng": "không", "hem": "không",
    "khum": "không", "hum": "không", "hk": "không", "j": "gì", "z": "vậy", "v": "vậy", "dzậy": "vậy", "r": "rồi", "oy": "rồi",
    "gòi": "rồi", "bn": "bao nhiêu", "bnh": "bao nhiêu", "bnhiu": "bao nhiêu",
    "bnhieu": "bao nhiêu", "nhiu": "nhiêu", "ntn": "như thế nào", "ntnao": "như thế nào",
    "bg": "bao giờ", "bjo": "bao giờ", "bh": "bảo hiểm", "h": "giờ", "thui": "thôi",
    # common verbs and adverbs
    "dc": "được", "đc": "được", "dx": "được", "đx": "được", "dk": "được", "đk": "được",
    "dki": "đăng ký", "đki": "đăng ký", "dky": "đăng ký", "đky": "đăng ký",
    "vs": "với", "ms": "mới", "cx": "cũng", "cg": "cũng", "cug": "cũng", "cũg": "cũng",
    "dag": "đang", "đag": "đang", "trc": "trước", "lm": "làm", "bik": "biết", "bít": "biết",
    "bjk": "biết", "bt": "biết", "ns": "nói", "hnay": "hôm nay", "hqua": "hôm qua",
    "tg": "thời gian", "tgian": "thời gian", "wa": "qua", "qa": "qua", "ak": "à", "ah": "à",
    "lun": "luôn", "ik": "đi", "oke": "ok", "okie": "ok", "oki": "ok", "okela": "ok",
    "tks": "cảm ơn", "thks": "cảm ơn", "thanks": "cảm ơn", "camon": "cảm ơn", "cam on": "cảm ơn",
    "pls": "làm ơn", "plz": "làm ơn", "tl": "trả lời", "rep": "trả lời", "ib": "nhắn tin",
    "inb": "nhắn tin", "lh": "liên hệ", "nvien": "nhân viên", "tvv": "tư vấn viên",
    # people (pronouns are fillers for matching; kept expanded for the toned key)
    "ad": "admin", "mn": "mọi người", "mng": "mọi người", "mk": "mình", "mik": "mình",
    "mh": "mình", "e": "em", "a": "anh", "cj": "chị", "c": "chị", "t": "tôi", "b": "bạn",
    "ng": "người", "ngta": "người ta", "ck": "chồng", "vk": "vợ", "bme": "bố mẹ", "bm": "bố mẹ",
    # the domain
    "bhxh": "bảo hiểm xã hội", "bhyt": "bảo hiểm y tế", "bhtn": "bảo hiểm thất nghiệp",
    "bhxhtn": "bảo hiểm xã hội tự nguyện", "bhxhbb": "bảo hiểm xã hội bắt buộc",
    "tnld": "tai nạn lao động", "tnlđ": "tai nạn lao động", "bnn": "bệnh nghề nghiệp",
    "tctn": "trợ cấp thất nghiệp", "tc": "trợ cấp", "ts": "thai sản", "tt": "thủ tục",
    "nđ": "nghị định", "nd": "nghị định", "qđ": "quyết định", "qd": "quyết định",
    "lđ": "lao động", "ld": "lao động", "nld": "người lao động", "nlđ": "người lao động",
    "nsdld": "người sử dụng lao động", "nsdlđ": "người sử dụng lao động",
    "hđlđ": "hợp đồng lao động", "hdld": "hợp đồng lao động", "hđ": "hợp đồng",
    "hd": "hợp đồng", "cty": "công ty", "dn": "doanh nghiệp", "sđt": "số điện thoại",
    "sdt": "số điện thoại", "dt": "điện thoại", "đt": "điện thoại",
    "cccd": "căn cước công dân", "cmnd": "chứng minh nhân dân", "cmt": "chứng minh thư",
    "stk": "số tài khoản", "tk": "tài khoản", "mst": "mã số thuế",
    "msbhxh": "mã số bảo hiểm xã hội", "kcb": "khám chữa bệnh", "dvc": "dịch vụ công",
    "ubnd": "ủy ban nhân dân", "bv": "bệnh viện", "lcs": "lương cơ sở",
    "ltt": "lương tối thiểu", "lcb": "lương cơ bản", "hssv": "học sinh sinh viên",
    "hs": "hồ sơ", "gks": "giấy khai sinh", "gcn": "giấy chứng nhận", "hgđ": "hộ gia đình",
    "hgd": "hộ gia đình", "tncn": "thu nhập cá nhân", "xh": "xã hội", "yt": "y tế",
    "bhtm": "bảo hiểm thương mại", "nv": "nhân viên", "cdnv": "chế độ nghỉ việc",
}

# Abbreviations whose meaning depends on a neighbouring word (its fold): (side, words, expansion),
# the first rule that holds wins; with none, ABBREVIATIONS' reading if it has one, else as typed.
CONTEXTUAL: dict[str, list[tuple[str, frozenset[str], str]]] = {
    # "bhxh tn" as "bhxhtn": tự nguyện; "bh tn", "hưởng tn", "tiền tn": thất nghiệp (as "bhtn",
    # "tctn"); a bare "tn", "đóng tn" stays ambiguous
    "tn": [("prev", frozenset({"bhxh", "xh"}), "tự nguyện"),
           ("prev", frozenset({"bh", "huong", "tien", "tro", "cap", "tc", "lanh", "nhan"}), "thất nghiệp")],
    # "dk hưởng", "dk rút": điều kiện; otherwise "được" (ABBREVIATIONS)
    "dk": [("next", frozenset({"huong", "rut", "nhan", "de", "tham", "nghi", "ve", "la", "gi", "j"}), "điều kiện")],
}
CONTEXTUAL["đk"] = CONTEXTUAL["dk"]

# Fillers dropped from the keys: recognised on the toned token (so "hội" in "xã hội" is never
# mistaken for the filler "hỏi"), or on unambiguous ASCII forms.
FILLERS_TONED = {
    "ạ", "à", "ơi", "nhé", "nha", "nhá", "vậy", "thì", "ạk", "hả", "nhỉ", "ấy", "đó", "đấy",
    "admin", "mình", "em", "anh", "chị", "tôi", "bạn", "cho", "hỏi", "xin", "giúp", "với", "dạ",
    "vâng", "làm", "ơn", "rồi", "cái", "luôn", "này", "kia", "mọi", "người",
}
FILLERS_ASCII = {"oi", "nhe", "nha", "a", "ah", "ha", "nhi", "da", "vang", "admin", "ad"}

# English function words, dropped only from English text: unaccented Vietnamese reuses many of
# these letters ("the" = thẻ, "can" = cần, "me" = mẹ), so they are never dropped from Vietnamese.
ENGLISH_STOPWORDS = frozenset(
    "a an the is are am was were be been being do does did i me my mine you your we our us they "
    "their it its this that these those to of in on at for from by with about as into can could "
    "will would should shall may might must have has had get got please hello hi there here what "
    "which who whom how when where why if or and but so than then just also any some there's i'm "
    "i've it's what's don't doesn't".split()
)


def strip_tone(syllable: str) -> tuple[str, str | None]:
    """Split a syllable into its toneless NFC form and its tone mark (or None)."""
    tone = None
    kept = []
    for ch in unicodedata.normalize("NFD", syllable):
        if ch in TONE_MARKS:
            tone = ch
        else:
            kept.append(ch)
    return unicodedata.normalize("NFC", "".join(kept)), tone


def _tone_position(s: str) -> int | None:
    """Index in the toneless syllable `s` of the vowel that carries the tone, by one fixed rule."""
    start = 0
    if s.startswith("qu") and len(s) > 2:
        start = 2
    elif s.startswith("gi") and len(s) > 2 and s[2] in VOWELS:
        start = 2
    idx = [i for i in range(start, len(s)) if s[i] in VOWELS]
    if not idx:
        idx = [i for i in range(len(s)) if s[i] in VOWELS]
        if not idx:
            return None
    # one contiguous vowel cluster, or this is not a Vietnamese syllable
    if idx[-1] - idx[0] + 1 != len(idx):
        return None
    marked = [i for i in idx if s[i] in QUALITY_VOWELS]
    if marked:
        return marked[-1]
    closed = idx[-1] < len(s) - 1
    if closed:
        return idx[-1]
    cluster = s[idx[0] : idx[-1] + 1]
    if cluster in ("oa", "oe", "uy"):
        return idx[1]
    if len(idx) == 3:
        return idx[1]
    return idx[0]


@lru_cache(maxsize=65536)
def canonical_tone(syllable: str) -> str:
    """Re-place a syllable's tone mark canonically: hoà/hòa → hoà, qúy → quý, gìa → già."""
    base, tone = strip_tone(syllable)
    if tone is None:
        return base
    pos = _tone_position(base)
    if pos is None:
        return unicodedata.normalize("NFC", syllable)
    decomposed = unicodedata.normalize("NFD", base[: pos + 1]) + tone
    return unicodedata.normalize("NFC", decomposed + base[pos + 1 :])


@lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """Remove every diacritic: đ→d, then the combining marks (ố → o, ư → u)."""
    text = text.replace("đ", "d").replace("Đ", "D")
    return "".join(c for c in unicodedata.normalize("NFD", text) if not unicodedata.combining(c))


@dataclass(frozen=True)
class Normalized:
    """The keys of one message. `toned` keeps canonical tones; `fold` drops all marks."""

    text: str
    toned: tuple[str, ...]
    fold: tuple[str, ...]

    @property
    def fold_key(self) -> str:
        return " ".join(self.fold)

    @property
    def toned_key(self) -> str:
        return " ".join(self.toned)


def _in_context(key: str, tokens: list[str], i: int) -> str | None:
    """The reading of a context-dependent abbreviation at position i (CONTEXTUAL), or None."""
    for side, words, expansion in CONTEXTUAL.get(key, ()):
        j = i - 1 if side == "prev" else i + 1
        if 0 <= j < len(tokens) and fold(tokens[j]) in words:
            return expansion
    return None


def _expand(tokens: list[str]) -> list[str]:
    out: list[str] = []
    for i, tok in enumerate(tokens):
        key = tok
        if key not in ABBREVIATIONS and len(key) > 1 and key[-1] == key[-2] and key[:-1] in ABBREVIATIONS:
            key = key[:-1]  # "dcc", "okk": a doubled last letter of a known abbreviation
        reading = _in_context(key, tokens, i)
        if reading:
            out.extend(reading.split())
            continue
        if key in ABBREVIATIONS and (key.isascii() or "đ" in key or key in ("kô", "khôg", "hông", "hổng", "bít", "cũg")):
            out.extend(ABBREVIATIONS[key].split())
        else:
            out.append(tok)
    return out


def clean(text: str) -> str:
    """NFC, lower case, URLs removed, amounts and "1 lần" rewritten, letter runs collapsed."""
    text = unicodedata.normalize("NFC", text).lower()
    text = _URL.sub(" ", text)
    text = _NUM_K.sub(r"\1 nghìn", text)
    text = _NUM_TR.sub(r"\1 triệu", text)
    text = _ONE_TIME.sub("một lần", text)
    return _REPEAT.sub(r"\1", text)


def normalize(text: str, drop_fillers: bool = True, lang: str = "vi") -> Normalized:
    """The matching keys of a message (or of a knowledge-base phrasing: both go through here).
    English text (`lang="en"`) keeps its words as typed, less its function words."""
    words = _TOKEN.findall(clean(text))
    if lang == "en":
        kept_en = [w for w in words if w not in ENGLISH_STOPWORDS] if drop_fillers else words
        words = kept_en or words
        return Normalized(text=text, toned=tuple(words), fold=tuple(fold(w) for w in words))
    tokens = _expand(words)
    toned = [canonical_tone(t) for t in tokens]
    if drop_fillers:
        kept = [t for i, t in enumerate(toned) if t not in FILLERS_TONED and not (t.isascii() and t in FILLERS_ASCII)
                or (t == "da" and i and fold(toned[i - 1]) == "toi")]  # "toi da": tối đa, not tôi đã
        toned = kept or toned  # a message made only of fillers keeps them ("dạ vâng", "ạ")
    return Normalized(text=text, toned=tuple(toned), fold=tuple(fold(t) for t in toned))


def question_key(text: str, lang: str) -> str:
    """When two knowledge-base questions are the same to the matcher: the same fold key."""
    return normalize(text, lang=lang).fold_key


_EN_WORDS = frozenset(
    "the a an is are am was be do does did i my me you your we our can could how what when where "
    "which who why will would should have has get got pay paid much many long of to for in on at "
    "and or if it this that with from please hello hi thanks thank insurance social health "
    "benefit benefits work worker employee employer job card hospital retire retirement pension "
    "sick leave maternity unemployment foreign foreigner vietnam agreement certificate coverage "
    "person human agent speak talk need want".split()
)
_VI_MARKED = re.compile(r"[àáảãạăằắẳẵặâầấẩẫậèéẻẽẹêềếểễệìíỉĩịòóỏõọôồốổỗộơờớởỡợùúủũụưừứửữựỳýỷỹỵđ]")


def detect_language(text: str) -> str:
    """"vi" or "en": Vietnamese letters settle it; otherwise count common English words."""
    text = unicodedata.normalize("NFC", text).lower()
    if _VI_MARKED.search(text):
        return "vi"
    words = _TOKEN.findall(text)
    if not words:
        return "vi"
    english = sum(w in _EN_WORDS for w in words)
    vietnamese_abbrev = sum(w in ABBREVIATIONS for w in words if w not in _EN_WORDS)
    return "en" if english >= max(1, len(words) // 3) and english > vietnamese_abbrev else "vi"
