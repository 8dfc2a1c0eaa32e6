"""`vssbot tune`: the grid search scores each labelled set as the bot would, and keeps the wrong
share under the ceiling on every set, not only on all of them together."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from app.bot import Bot
from app.evaluation import evaluate_bot, load_cases
from app.tuning import Trial, best, grid_search

TESTS = Path(__file__).parent


def _report(bot: Bot, cases: list[dict]) -> tuple[float, float]:
    report = evaluate_bot(bot, cases)
    return report.share("right"), report.share("wrong")


def test_the_current_settings_score_as_the_bot_answers(bot: Bot) -> None:
    sets = [load_cases([TESTS / "eval" / "sickness.jsonl"]), load_cases([TESTS / "heldout" / "conversation.jsonl"])]
    current = asdict(bot.matcher.config)
    grid = {"answer_confidence": [current["answer_confidence"], 0.0],
            "w_rank_learned": [current["w_rank_learned"], 0.0]}
    trials = grid_search(bot, sets, grid)
    assert len(trials) == 4 and all(len(t.per_set) == 2 for t in trials)
    assert asdict(bot.matcher.config) == current  # the search leaves the matcher as it was
    (now,) = [t for t in trials if all(t.params[k] == current[k] for k in grid)]
    for (right, wrong), cases in zip(now.per_set, sets):
        assert (right, wrong) == _report(bot, cases)
    # answering whatever ranks first (no confidence needed) answers more, and more of it wrongly
    (reckless,) = [t for t in trials if t.params == {"w_rank_learned": current["w_rank_learned"], "answer_confidence": 0.0}]
    assert reckless.wrong > now.wrong


def test_best_keeps_every_set_under_the_ceiling() -> None:
    fine = Trial({"a": 1}, right=0.90, wrong=0.015, clarified=0.0, per_set=((0.90, 0.01), (0.90, 0.02)))
    one_set_over = Trial({"a": 2}, right=0.95, wrong=0.015, clarified=0.0, per_set=((0.99, 0.0), (0.91, 0.03)))
    lopsided = Trial({"a": 3}, right=0.92, wrong=0.01, clarified=0.0, per_set=((0.99, 0.0), (0.85, 0.02)))
    assert best([one_set_over, lopsided, fine], 0.02) == [fine, lopsided]  # the weakest set's right first
