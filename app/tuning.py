"""Grid search of the matcher's decision thresholds on a labelled set (`vssbot tune`).

Ranking is done once per question; each combination of thresholds then only re-decides, so a
grid of thousands of combinations takes minutes. Each file or folder given is a set; the pick:
among the combinations whose wrong-answer share stays under a ceiling on every set (a confident
wrong answer is the worst outcome), the one whose weakest set has the most right answers. The
chosen numbers go into intents/matcher.py's MatcherConfig by hand, with the
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
    "conf_centre": [0.3, 0.4, 0.5],
    "conf_slope": [8],
    "conf_margin": [4, 8, 16],
    "conf_evidence": [8, 16, 32],
    "margin_bias": [1, 2],
    "w_learned": [0.0, 0.5, 1.0],
    "w_rank_learned": [0.1, 0.2, 0.3, 0.5],
    "answer_confidence": [0.3, 0.35, 0.4, 0.45, 0.5],
    "min_coverage": [0.4, 0.5],
}


@dataclass(frozen=True)
class Trial:
    params: dict[str, float]
    right: float  # over every case
    wrong: float
    clarified: float
    per_set: tuple[tuple[float, float], ...] = ()  # (right, wrong) of each labelled set, in order


def _reply(bot: Bot, d: Decision, answers: dict[tuple[str, str], str]) -> dict[str, Any]:
    if d.kind == "faq" and d.entry is not None:
        key = (d.entry.id, d.lang)
        if key not in answers:
            answers[key] = bot.kb.answer(d.entry, d.lang)
        return {"kind": "faq", "regime": d.entry.regime.value if d.entry.regime else None, "answer": answers[key]}
    if d.kind == "clarify":
        return {"kind": "clarify", "answer": "", "suggestions": [{"regime": e.regime.value if e.regime else None} for e in d.options]}
    return {"kind": d.kind, "answer": ""}


def grid_search(bot: Bot, sets: list[list[dict[str, Any]]], grid: dict[str, list[float]] | None = None) -> list[Trial]:
    """Every combination of `grid`, scored on each labelled set (a list of cases) and on all of them."""
    grid = dict(grid or DEFAULT_GRID)
    matcher = bot.matcher
    base = matcher.config
    ranked = []  # (set number, candidates, coverage, reply language, case, question part's ranking)
    for n, cases in enumerate(sets):
        for case in cases:
            lang = matcher.language(case["text"])
            candidates, coverage = matcher.rank(normalize(case["text"], lang=lang))
            ranked.append((n, candidates, coverage, case.get("lang") or lang, case, matcher.rank_focus(case["text"], lang)))
    answers: dict[tuple[str, str], str] = {}
    trials = []
    # The ranking weight changes least often: the candidates are re-ranked once per value.
    rank_weights = grid.pop("w_rank_learned", [base.w_rank_learned])
    try:
        for w in rank_weights:
            matcher.config = replace(base, w_rank_learned=w)
            reranked = [(n, matcher.reranked(c), cov, lang, case, focus) for n, c, cov, lang, case, focus in ranked]
            for combo in itertools.product(*grid.values()):
                params = {"w_rank_learned": w, **dict(zip(grid.keys(), combo))}
                matcher.config = replace(base, **params)
                verdicts = [(n, judge(case, _reply(bot, matcher.decide_ranked(c, cov, lang, focus), answers)))
                            for n, c, cov, lang, case, focus in reranked]
                trials.append(_trial(params, verdicts, len(sets)))
    finally:
        matcher.config = base
    return trials


def _trial(params: dict[str, float], verdicts: list[tuple[int, str]], n_sets: int) -> Trial:
    def shares(vs: list[str]) -> tuple[float, float, float]:
        n = max(1, len(vs))
        return vs.count("right") / n, vs.count("wrong") / n, vs.count("clarified") / n

    right, wrong, clarified = shares([v for _, v in verdicts])
    per_set = tuple(shares([v for n, v in verdicts if n == k])[:2] for k in range(n_sets))
    return Trial(params, right, wrong, clarified, per_set)


def best(trials: list[Trial], max_wrong: float) -> list[Trial]:
    """The combinations that keep every set's wrong share within `max_wrong`, best first: the
    highest right share of the weakest set, then over all cases."""
    ok = [t for t in trials if all(w <= max_wrong for _, w in t.per_set or ((t.right, t.wrong),))]
    return sorted(ok, key=lambda t: (min((r for r, _ in t.per_set), default=t.right), t.right, -t.wrong), reverse=True)
