"""Message → ranked entries → a decision: answer (faq), offer options (clarify), or say so.

Scoring (matching.md §4.4): a weighted sum of normalised signals, not rank fusion: BM25 in the
fold space, character-trigram cosine, and rapidfuzz token ratios against the candidates' own
phrasings. Confidence is a logistic function of the best score and its margin over the next
entry, so that a confident wrong answer (the worst outcome) is traded for a clarification.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz import fuzz

from intents.index import Index, word_terms
from intents.normalize import Normalized, detect_language, normalize
from knowledge.schema import Entry

DecisionKind = str  # "faq" | "clarify" | "fallback" | "smalltalk" | "handover"


@dataclass(frozen=True)
class MatcherConfig:
    """Weights and thresholds, tuned on the project's labelled evaluation set (tests/eval)."""

    w_bm25: float = 0.35
    w_char: float = 0.2
    w_row_cover: float = 0.2
    w_token_set: float = 0.1
    w_ratio: float = 0.15
    # confidence = sigmoid(a · (score - centre) + b · margin)
    conf_slope: float = 12.0
    conf_centre: float = 0.56
    conf_margin: float = 8.0
    answer_confidence: float = 0.6  # answer outright at or above this
    clarify_score: float = 0.38  # below this best score: not sure at all → fallback
    clarify_window: float = 0.08  # options offered: within this of the best score
    conversation_score: float = 0.5  # greeting / handover / out-of-scope recognised at or above
    min_coverage: float = 0.45  # share of the message's idf mass the index knows
    candidate_rows: int = 60
    max_options: int = 3


@dataclass(frozen=True)
class Candidate:
    entry: Entry
    score: float


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    lang: str
    confidence: float
    entry: Entry | None = None  # the answered faq, or the conversational intent recognised
    options: list[Entry] = field(default_factory=list)  # clarify: what to offer
    candidates: list[Candidate] = field(default_factory=list)  # what was considered, best first
    coverage: float = 0.0


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class Matcher:
    """Built once from the knowledge base's entries; `rebuild` after a reload."""

    def __init__(self, entries: list[Entry], config: MatcherConfig | None = None):
        self.config = config or MatcherConfig()
        self.index = Index(entries)
        self._rows_by_entry: dict[int, list[str]] = {}
        self._row_ids_by_entry: dict[int, list[int]] = {}
        for i, row in enumerate(self.index.rows):
            self._rows_by_entry.setdefault(row.entry, []).append(row.key)
            self._row_ids_by_entry.setdefault(row.entry, []).append(i)

    def rank(self, norm: Normalized, limit: int = 8) -> tuple[list[Candidate], float]:
        """The best entries for a normalised message, with fused scores, and the coverage."""
        cfg = self.config
        if not norm.fold or self.index.size == 0:
            return [], 0.0
        bm25, coverage = self.index.bm25(norm)
        char = self.index.char_cosine(norm)
        lexical = cfg.w_bm25 * bm25 + cfg.w_char * char
        top = np.argpartition(-lexical, min(cfg.candidate_rows, self.index.size - 1))[: cfg.candidate_rows]
        best_row: dict[int, int] = {}
        for r in top:
            e = int(self.index.row_entry[r])
            if e not in best_row or lexical[r] > lexical[best_row[e]]:
                best_row[e] = int(r)
        query = norm.fold_key
        query_terms = set(word_terms(norm))
        scored: list[Candidate] = []
        for e, r in best_row.items():
            fuzzy = max(
                cfg.w_token_set * fuzz.token_set_ratio(query, key) / 100 + cfg.w_ratio * fuzz.ratio(query, key) / 100
                for key in self._rows_by_entry[e]
            )
            cover = max(self.index.row_coverage(row, query_terms) for row in self._row_ids_by_entry[e])
            scored.append(Candidate(self.index.entries[e], float(lexical[r]) + fuzzy + cfg.w_row_cover * cover))
        scored.sort(key=lambda c: c.score, reverse=True)
        return scored[:limit], coverage

    def confidence(self, score: float, margin: float) -> float:
        cfg = self.config
        return _sigmoid(cfg.conf_slope * (score - cfg.conf_centre) + cfg.conf_margin * margin)

    def decide(self, text: str, lang: str | None = None) -> Decision:
        cfg = self.config
        norm = normalize(text)
        lang = lang or detect_language(text)
        candidates, coverage = self.rank(norm)
        if not candidates:
            return Decision("fallback", lang, 0.0, candidates=[], coverage=coverage)
        best = candidates[0]
        faqs = [c for c in candidates if c.entry.kind == "faq"]
        conv = [c for c in candidates if c.entry.kind != "faq"]
        best_faq_score = faqs[0].score if faqs else 0.0

        # Conversational intents win when they are recognised and no answer fits better.
        if conv and conv[0] is best and best.score >= cfg.conversation_score:
            kind = {"smalltalk": "smalltalk", "handover": "handover"}.get(best.entry.kind, "fallback")
            conf = self.confidence(best.score, best.score - best_faq_score)
            return Decision(kind, lang, round(conf, 3), entry=best.entry, candidates=candidates, coverage=coverage)

        if not faqs or coverage < cfg.min_coverage:
            return Decision("fallback", lang, 0.0, candidates=candidates, coverage=coverage)
        top = faqs[0]
        runner_up = next((c.score for c in faqs[1:]), 0.0)
        conf = self.confidence(top.score, top.score - runner_up)
        if conf >= cfg.answer_confidence:
            return Decision("faq", lang, round(conf, 3), entry=top.entry, candidates=candidates, coverage=coverage)
        if top.score >= cfg.clarify_score:
            options = [c.entry for c in faqs if c.score >= top.score - cfg.clarify_window][: cfg.max_options]
            return Decision("clarify", lang, round(conf, 3), options=options, candidates=candidates, coverage=coverage)
        return Decision("fallback", lang, round(conf, 3), candidates=candidates, coverage=coverage)
