"""Grid search of the matcher's decision thresholds on a labelled set (`vssbot tune`).

Ranking is done once per question; each combination of thresholds then only re-decides, so a
grid of thousands of combinations takes seconds. The pick: the most right answers among the
combinations whose wrong-answer share stays under a ceiling (a confident wrong answer is the
worst outcome). The chosen numbers go into intents/matcher.py's MatcherConfig by hand, with the
figures, so that a change of thresholds is a reviewed commit.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Any

from app.bot import Bot
from app.evaluation import judge
from intents.matcher import Decision
from intents.normalize import normalize

DEFAULT_GRID: dict[str, list[float]] = {
    "conf_centre": [0.25, 0.3, 0.35, 0.4],
    "conf_slope": [8, 12, 20],
    "conf_margin": [8, 16, 32],
    "conf_evidence": [8, 16, 32],
    "margin_bias": [1, 2, 3],
    "w_learned": [0.0, 0.5, 1.0, 2.0],
    "answer_confidence": [0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
    "min_coverage": [0.4, 0.5],
}


@dataclass(frozen=True)
class Trial:
    params: dict[str, float]
    right: float
    wrong: float
    clarified: float


def _reply(bot: Bot, d: Decision, answers: dict[tuple[str, str], str]) -> dict[str, Any]:
    if d.kind == "faq" and d.entry is not None:
        key = (d.entry.id, d.lang)
        if key not in answers:
            answers[key] = bot.kb.answer(d.entry, d.lang)
        return {"kind": "faq", "regime": d.entry.regime.value if d.entry.regime else None, "answer": answers[key]}
    if d.kind == "clarify":
        return {"kind": "clarify", "answer": "", "suggestions": [{"regime": e.regime.value if e.regime else None} for e in d.options]}
    return {"kind": d.kind, "answer": ""}


def grid_search(bot: Bot, cases: list[dict[str, Any]], grid: dict[str, list[float]] | None = None) -> list[Trial]:
    grid = grid or DEFAULT_GRID
    matcher = bot.matcher
    base = matcher.config
    ranked = []
    for case in cases:
        lang = matcher.language(case["text"])
        candidates, coverage = matcher.rank(normalize(case["text"], lang=lang))
        ranked.append((candidates, coverage, case.get("lang") or lang))
    answers: dict[tuple[str, str], str] = {}
    trials = []
    try:
        for combo in itertools.product(*grid.values()):
            params = dict(zip(grid.keys(), combo))
            matcher.config = replace(base, **params)
            verdicts = [
                judge(case, _reply(bot, matcher.decide_ranked(c, cov, lang), answers))
                for case, (c, cov, lang) in zip(cases, ranked)
            ]
            n = max(1, len(verdicts))
            trials.append(Trial(params, verdicts.count("right") / n, verdicts.count("wrong") / n, verdicts.count("clarified") / n))
    finally:
        matcher.config = base
    return trials


def best(trials: list[Trial], max_wrong: float) -> list[Trial]:
    ok = [t for t in trials if t.wrong <= max_wrong]
    return sorted(ok, key=lambda t: (t.right, -t.wrong), reverse=True)
