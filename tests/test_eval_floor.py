"""Accuracy floors on the project's own labelled evaluation sets.

Three sets of 322-350 questions each, every regime and writing style:
- tests/eval: written without seeing the phrasings, then used to develop the knowledge base and
  the matcher (its misses guided the phrasings added on 25 Nov 2026) and to tune the thresholds.
- tests/heldout: written on 25 Nov 2026 by writers who saw facts.md and the answers but neither the
  phrasings nor the other sets, and who did not run the bot. Its first measurement (right 0.917,
  wrong 0.046 with the thresholds of the day) is the honest figure for new questions; since then
  the thresholds are tuned on both sets (`vssbot tune tests/eval tests/heldout`), and one label
  was corrected (hC-006: the general contribution-rates answer gives the 1% asked for).
- tests/blind (322): written on 25 Nov 2026 (third session) by three more writers under the same
  rules, never tuned on and never used to pick a phrasing; only its summary figures were read
  (about eight runs: to compare the session's code and knowledge-base changes, and once to check
  the retuned thresholds before adopting them). First measurement, with the code and knowledge
  base of the session's start: right 0.910, wrong 0.012.
Labels corrected in tests/eval on 25 Nov 2026, where the bot's answer was right but the label
allowed one regime only: unemployment-021, unemployment-023, conv-054.
A *wrong* answer is a confident answer that is not right, the worst outcome. The acceptance set
(../shared/eval/dev.jsonl) is never used for tuning. The floors pin what the matcher reaches today,
so that a change that makes it worse fails; the goal is right >= 0.93 with wrong <= 0.02 on each.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from app.bot import Bot
from app.evaluation import evaluate_bot, load_cases

TESTS = Path(__file__).parent
MAX_WRONG = 0.02
MIN_CASES = 300
# set → floor of the right share
FLOORS = {"eval": 0.93, "heldout": 0.89, "blind": 0.93}


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_project_evaluation_set_meets_the_floors(bot: Bot, name: str) -> None:
    cases = load_cases([TESTS / name])
    assert len(cases) >= MIN_CASES
    report = evaluate_bot(bot, cases)
    print("\n" + report.render(show_misses=True))
    assert report.share("wrong") <= MAX_WRONG, report.summary()
    assert report.share("right") >= FLOORS[name], report.summary()


@pytest.mark.parametrize("name", sorted(FLOORS))
def test_every_regime_and_style_is_in_the_set(name: str) -> None:
    cases = load_cases([TESTS / name])
    regimes = {r for c in cases if c["expect"] == "faq" for r in ([c["regime"]] if isinstance(c["regime"], str) else c["regime"])}
    assert len(regimes) == 10
    styles = {c.get("style") for c in cases}
    assert {"accented", "no_diacritics", "teencode", "english"} <= styles
    assert {"smalltalk", "handover", "fallback"} <= {c["expect"] for c in cases if isinstance(c["expect"], str)}
