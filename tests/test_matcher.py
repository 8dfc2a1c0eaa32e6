"""The matcher's decisions on a small hand-made knowledge base: answer, clarify, fall back, chat."""
from __future__ import annotations

from datetime import date

import numpy as np
import pytest

from intents.matcher import Matcher
from intents.normalize import normalize
from knowledge.schema import Entry, Regime


def faq(id_: str, regime: Regime, vi: list[str], en: list[str]) -> Entry:
    return Entry(id=id_, regime=regime, questions_vi=vi, questions_en=en, answer_vi=f"trả lời {id_}",
                 answer_en=f"answer {id_}", legal_basis="Điều 1", checked=date(2026, 11, 24))


def conv(id_: str, kind: str, vi: list[str], en: list[str]) -> Entry:
    return Entry(id=id_, kind=kind, questions_vi=vi, questions_en=en, answer_vi=id_, answer_en=id_)  # type: ignore[arg-type]


ENTRIES = [
    faq("mat.leave", Regime.maternity,
        ["Nghỉ thai sản được bao lâu?", "nghi sinh con duoc may thang", "nghỉ đẻ mấy tháng", "thời gian nghỉ thai sản"],
        ["How long is maternity leave?"]),
    faq("mat.father", Regime.maternity,
        ["Chồng được nghỉ mấy ngày khi vợ sinh con?", "chong nghi khi vo sinh", "lao động nam nghỉ thai sản"],
        ["How many days of paternity leave?"]),
    faq("ui.amount", Regime.unemployment,
        ["Trợ cấp thất nghiệp được bao nhiêu tiền?", "muc huong tro cap that nghiep", "tiền thất nghiệp mỗi tháng"],
        ["How much is the unemployment benefit?"]),
    faq("ui.where", Regime.unemployment,
        ["Nộp hồ sơ thất nghiệp ở đâu?", "lam ho so that nghiep o dau", "trung tâm dịch vụ việc làm"],
        ["Where do I file for unemployment benefit?"]),
    faq("old.withdraw", Regime.old_age,
        ["Điều kiện rút BHXH một lần là gì?", "rut bhxh mot lan", "nhận bảo hiểm xã hội một lần"],
        ["Can I withdraw my social insurance in one lump sum?"]),
    conv("smalltalk.greeting", "smalltalk", ["xin chào", "chào ad", "alo", "hello"], ["hi", "hello there"]),
    conv("smalltalk.thanks", "smalltalk", ["cảm ơn", "cám ơn bạn", "tks"], ["thank you", "thanks"]),
    conv("handover.human", "handover", ["gặp nhân viên", "cho tôi nói chuyện với tư vấn viên", "có người thật không"],
         ["talk to a person", "speak to an agent"]),
    conv("oos.gold", "out_of_scope", ["giá vàng hôm nay", "giá xăng", "thời tiết ngày mai"], ["gold price today"]),
]


@pytest.fixture(scope="module")
def matcher() -> Matcher:
    return Matcher(ENTRIES)


@pytest.mark.parametrize(
    ("text", "entry_id"),
    [
        ("nghỉ thai sản được mấy tháng vậy ad", "mat.leave"),
        ("nghi thai san bao lau", "mat.leave"),
        ("ck đc nghỉ mấy ngày khi vk sinh", "mat.father"),
        ("tro cap that nghiep dc bn tien", "ui.amount"),
        ("làm hồ sơ thất nghiệp ở đâu ạ", "ui.where"),
        ("rút bhxh 1 lần", "old.withdraw"),
        ("How long is maternity leave in Vietnam?", "mat.leave"),
    ],
)
def test_clear_questions_are_answered(matcher: Matcher, text: str, entry_id: str) -> None:
    d = matcher.decide(text)
    assert d.kind == "faq", (d.kind, d.candidates[:3])
    assert d.entry is not None and d.entry.id == entry_id
    assert matcher.config.answer_confidence <= d.confidence <= 1.0


@pytest.mark.parametrize(
    ("text", "kind"),
    [("chào ad", "smalltalk"), ("alo alo", "smalltalk"), ("cảm ơn ad nhiều", "smalltalk"), ("hi", "smalltalk"),
     ("cho em gặp nhân viên", "handover"), ("Can I talk to a person?", "handover")],
)
def test_conversational_intents(matcher: Matcher, text: str, kind: str) -> None:
    assert matcher.decide(text).kind == kind


@pytest.mark.parametrize(
    "text", ["giá vàng hôm nay bao nhiêu", "xyz abc 123", "bóng đá tối qua ai thắng", "...", "😀", "mua iphone ở đâu"]
)
def test_out_of_scope_and_noise_fall_back(matcher: Matcher, text: str) -> None:
    d = matcher.decide(text)
    assert d.kind == "fallback", (d.kind, d.candidates[:3])


def test_an_ambiguous_question_offers_options_instead_of_guessing(matcher: Matcher) -> None:
    d = matcher.decide("thất nghiệp")
    assert d.kind == "clarify"
    assert {e.id for e in d.options} == {"ui.amount", "ui.where"}
    assert 1 < len(d.options) <= 3


def test_language_follows_the_message_unless_asked(matcher: Matcher) -> None:
    assert matcher.decide("How much is the unemployment benefit?").lang == "en"
    assert matcher.decide("tro cap that nghiep bao nhieu").lang == "vi"
    assert matcher.decide("tro cap that nghiep bao nhieu", lang="en").lang == "en"


def test_candidates_are_ranked_and_confidence_is_bounded(matcher: Matcher) -> None:
    d = matcher.decide("trợ cấp thất nghiệp bao nhiêu")
    scores = [c.score for c in d.candidates]
    assert scores == sorted(scores, reverse=True)
    assert 0.0 <= d.confidence <= 1.0


def test_the_classifier_learns_the_words_that_tell_siblings_apart() -> None:
    from intents.learned import Learned

    docs = [["tien", "bao", "nhieu"], ["muc", "huong", "bao", "nhieu"], ["nop", "o", "dau"], ["trung", "tam", "o", "dau"]]
    learned = Learned(docs, [0, 0, 1, 1], n_labels=3)  # label 2 has no phrasing
    every = np.arange(3)
    scores = learned.scores(["bao", "nhieu", "chua", "biet"], every)  # unknown words are left out
    assert scores is not None and scores[0] > scores[1] and scores[2] == float("-inf")
    scores = learned.scores(["o", "dau"], every)
    assert scores is not None and scores[1] > scores[0]
    assert list(learned.scores(["o", "dau"], np.asarray([1]))) == [scores[1]]  # only the labels asked for
    assert Learned([["a"], ["b"]], [0, 0], n_labels=1).scores(["a"], np.arange(1)) is None  # nothing to learn


def _with(matcher: Matcher, **changes: float) -> Matcher:
    """The same built matcher with other settings (no retraining)."""
    from dataclasses import replace

    other = Matcher.__new__(Matcher)
    other.__dict__.update(matcher.__dict__, config=replace(matcher.config, **changes))
    return other


def test_the_classifiers_lead_can_go_into_the_confidence(matcher: Matcher) -> None:
    text = "tro cap that nghiep duoc bao nhieu tien"
    d = matcher.decide(text)
    assert d.entry is not None and d.entry.id == "ui.amount"
    best = d.candidates[0]
    assert best.entry.id == "ui.amount" and best.lead > 0.5  # it prefers the same entry, clearly
    other = next(c for c in d.candidates if c.entry.id == "ui.where")
    assert other.lead < 0
    weighed = _with(matcher, w_learned=0.5)
    # a close lexical call: the classifier's clear preference raises it, its doubt lowers it ...
    lexical = weighed.confidence(0.5, 0.02, 0.01)
    assert weighed.confidence(0.5, 0.02, 0.01, lead=0.9) > lexical > weighed.confidence(0.5, 0.02, 0.01, lead=-0.9)
    # ... but it never makes a poor fit (words the knowledge base does not know) an answer
    assert weighed.confidence(0.1, 0.3, 0.3, lead=1.0) < weighed.config.answer_confidence
    # ... and with no weight, the confidence is the lexical one
    assert _with(matcher, w_learned=0.0).confidence(0.5, 0.02, 0.01, lead=0.9) == lexical


def test_the_classifier_reorders_the_candidates_but_does_not_make_a_match(matcher: Matcher) -> None:
    d = matcher.decide("tro cap that nghiep duoc bao nhieu tien")
    for c in d.candidates:  # the score is the lexical score plus the weighted probability
        assert c.score == pytest.approx(c.lexical + matcher.config.w_rank_learned * c.probability)
    assert sum(c.probability for c in d.candidates) <= 1.0 + 1e-6
    assert [c.score for c in d.candidates] == sorted((c.score for c in d.candidates), reverse=True)
    # without its weight the order is the index's own, and re-deciding at another weight re-ranks
    lexical_only = _with(matcher, w_rank_learned=0.0)
    ranked = lexical_only.decide_ranked(d.candidates, d.coverage, "vi").candidates
    assert [c.lexical for c in ranked] == sorted((c.lexical for c in ranked), reverse=True)
    # whatever the classifier thinks, a message of unknown words is not an answer
    assert _with(matcher, w_rank_learned=5.0).decide("giá vàng hôm nay bao nhiêu").kind == "fallback"


STORY = ("Tôi là công nhân may ở khu công nghiệp Bình Dương, làm được năm năm nay. Tháng trước xưởng giải thể, "
         "tôi mất việc và đã chốt sổ. ")


def test_the_question_part_of_a_long_message_is_ranked_too(matcher: Matcher) -> None:
    assert matcher.rank_focus("trợ cấp thất nghiệp được bao nhiêu tiền", "vi") is None  # one sentence
    assert matcher.rank_focus("Chào ad. Vậy đúng không?", "vi") is None  # the part would be the whole
    last, _ = matcher.rank_focus(STORY + "Trợ cấp thất nghiệp mỗi tháng được bao nhiêu tiền?", "vi")
    assert last[0].entry.id == "ui.amount"
    # a short last sentence takes the one before it: "mất việc và đã chốt sổ. Vậy có đúng không?"
    two, _ = matcher.rank_focus(STORY + "Vậy có đúng không?", "vi")
    alone, _ = matcher.rank(normalize("Vậy có đúng không?"))
    assert [c.entry.id for c in two] != [c.entry.id for c in alone]


def test_a_long_story_does_not_hide_the_question(matcher: Matcher) -> None:
    text = STORY + "Cho tôi hỏi trợ cấp thất nghiệp mỗi tháng được bao nhiêu tiền ạ?"
    lang = matcher.language(text)
    whole = matcher.decide_ranked(*matcher.rank(normalize(text, lang=lang)), lang)
    assert whole.kind != "faq"  # the story's words, unknown to the index, drown the question
    d = matcher.decide(text)
    assert (d.kind, d.entry.id) == ("faq", "ui.amount")
    # the same entry the question alone gets
    assert matcher.decide("Trợ cấp thất nghiệp mỗi tháng được bao nhiêu tiền?").entry.id == "ui.amount"


def test_an_abbreviation_in_an_english_phrasing_does_not_make_chat_english() -> None:
    hi = faq("hi.rate", Regime.health_insurance, ["Người lao động đóng BHYT bao nhiêu phần trăm?", "nld dong bhyt bn phan tram"],
             ["What percent of my salary goes to BHYT?", "health insurance contribution rate"])
    m = Matcher([*ENTRIES, hi])
    assert m.language("bhyt bn") == "vi"  # "bhyt" is in an English phrasing only, as typed
    assert m.language("thanks a lot") == "en"
    d = m.decide("nld dong bhyt bn %")
    assert (d.lang, d.kind, d.entry.id) == ("vi", "faq", "hi.rate")

