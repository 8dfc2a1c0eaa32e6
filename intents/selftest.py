"""Leave-one-out self-test: each phrasing, held out of the index, should still find its entry.

A phrasing that lands on another entry is a collision: either it is too generic, or the two
entries overlap. The rate is the share of phrasings whose own entry ranks first.
"""
from __future__ import annotations

from dataclasses import dataclass

from intents.matcher import Matcher
from intents.normalize import normalize


@dataclass(frozen=True)
class HeldOut:
    entry_id: str
    phrasing: str
    lang: str
    found_id: str | None  # the entry ranked first without this phrasing
    score: float
    margin: float  # best score minus the next entry's

    @property
    def ok(self) -> bool:
        return self.found_id == self.entry_id


def leave_one_out(matcher: Matcher, kinds: tuple[str, ...] = ("faq",)) -> list[HeldOut]:
    out = []
    index = matcher.index
    for row_id, row in enumerate(index.rows):
        entry = index.entries[row.entry]
        if entry.kind not in kinds or len(matcher.rows_of(row.entry)) < 2:
            continue
        phrasing = row.text
        candidates, _ = matcher.rank(normalize(phrasing, lang=row.lang), exclude=frozenset({row_id}))
        if not candidates:
            out.append(HeldOut(entry.id, phrasing, row.lang, None, 0.0, 0.0))
            continue
        best = candidates[0]
        margin = best.score - (candidates[1].score if len(candidates) > 1 else 0.0)
        out.append(HeldOut(entry.id, phrasing, row.lang, best.entry.id, best.score, margin))
    return out


def rate(results: list[HeldOut]) -> float:
    return sum(r.ok for r in results) / max(1, len(results))
