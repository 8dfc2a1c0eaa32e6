"""Group review items whose texts say the same thing, so staff decide once for a cluster.

Texts are compared by the matcher's own normaliser (fold key: no diacritics, chat abbreviations
expanded, fillers dropped), with rapidfuzz's token-set ratio, greedily: each item joins the first
group whose representative it resembles enough, else starts a group. Largest groups first.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from rapidfuzz import fuzz, process

from intents.normalize import detect_language, normalize

SIMILAR = 85.0  # token-set ratio (0-100) at or above which two texts are one question


class Groupable(Protocol):
    id: int
    text: str
    channel: str
    reason: str
    created_at: datetime


@dataclass
class Group:
    key: str  # the representative's normalised text
    text: str  # the representative's text as typed (the first, oldest, of the group)
    items: list[Groupable] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.items)

    @property
    def ids(self) -> list[int]:
        return [i.id for i in self.items]

    @property
    def channels(self) -> dict[str, int]:
        return _counts(i.channel for i in self.items)

    @property
    def reasons(self) -> dict[str, int]:
        return _counts(i.reason for i in self.items)

    @property
    def first(self) -> datetime:
        return min(i.created_at for i in self.items)

    @property
    def last(self) -> datetime:
        return max(i.created_at for i in self.items)

    @property
    def lang(self) -> str:
        return detect_language(self.text)


def _counts(values: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def group_key(text: str) -> str:
    lang = detect_language(text)
    return normalize(text, lang=lang).fold_key or text.strip().lower()


def similarity(a: str, b: str, **_: object) -> float:
    """Token-set ratio, which forgives extra words, unless one text is much shorter than the other
    ("bhyt" inside a long question about a child's card): then the stricter token-sort ratio."""
    la, lb = len(a.split()), len(b.split())
    if min(la, lb) / max(la, lb, 1) >= 0.75:
        return fuzz.token_set_ratio(a, b)
    return fuzz.token_sort_ratio(a, b)


def group_items(items: Sequence[Groupable], threshold: float = SIMILAR) -> list[Group]:
    """Items (oldest first is best: the oldest text represents its group) → groups, largest first."""
    groups: list[Group] = []
    keys: list[str] = []
    for item in sorted(items, key=lambda i: i.created_at):
        key = group_key(item.text)
        best = process.extractOne(key, keys, scorer=similarity, score_cutoff=threshold) if keys else None
        if best is not None:
            groups[best[2]].items.append(item)
            continue
        keys.append(key)
        groups.append(Group(key=key, text=item.text, items=[item]))
    groups.sort(key=lambda g: (-g.count, -g.last.timestamp()))
    return groups
