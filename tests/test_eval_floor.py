"""Accuracy floors on the project's own labelled evaluation set (tests/eval/*.jsonl).

The set is held out: its questions are not phrasings of the knowledge base (its writers did not
see the phrasings they were tested against, and the phrasings were written without it). A
*wrong* answer is a confident answer that is not right, the worst outcome. The matcher's
thresholds are tuned on this set (`vssbot tune tests/eval`), never on the acceptance set. The
floors pin what the matcher reaches today (right 0.849, wrong 0.020 on 350 questions), so a change
that makes it worse fails; the goal is right >= 0.93 with wrong <= 0.02.
"""
from __future__ import annotations

from pathlib import Path

from app.bot import Bot
from app.evaluation import evaluate, load_cases

EVAL_DIR = Path(__file__).parent / "eval"
MIN_RIGHT = 0.83
MAX_WRONG = 0.02
MIN_CASES = 300


def test_project_evaluation_set_meets_the_floors(bot: Bot) -> None:
    cases = load_cases([EVAL_DIR])
    assert len(cases) >= MIN_CASES
    replies = []
    for case in cases:
        r = bot.reply(case["text"], case.get("lang"))
        replies.append({"kind": r.kind, "regime": r.regime, "answer": r.text, "intent_id": r.intent_id,
                        "confidence": r.confidence, "suggestions": [{"regime": s.regime} for s in r.suggestions]})
    report = evaluate(cases, replies)
    print("\n" + report.render(show_misses=True))
    assert report.share("wrong") <= MAX_WRONG, report.summary()
    assert report.share("right") >= MIN_RIGHT, report.summary()


def test_every_regime_and_style_is_in_the_set() -> None:
    cases = load_cases([EVAL_DIR])
    regimes = {c["regime"] for c in cases if c["expect"] == "faq" and isinstance(c["regime"], str)}
    assert len(regimes) == 10
    styles = {c.get("style") for c in cases}
    assert {"accented", "no_diacritics", "teencode", "english"} <= styles
    assert {"smalltalk", "handover", "fallback"} <= {c["expect"] for c in cases if isinstance(c["expect"], str)}
