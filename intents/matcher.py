"""Message → ranked entries → a decision: answer (faq), offer options (clarify), or say so.

Scoring (matching.md §4.4): a weighted sum of normalised signals, not rank fusion: BM25 over
each phrasing (fold space, and the toned space when the message has diacritics) and over each
entry's whole vocabulary, character-trigram cosine, how much of the phrasing the message covers,
and rapidfuzz ratios against the candidates' best phrasings, plus the learned classifier's
probability for the entry (intents/learned.py), weighted. Confidence (see MatcherConfig) needs
both a good fit and a clear lead over the next entry, so that a confident wrong answer (the worst
outcome) is traded for a clarification. A long message (context, then the question) that is not
answered as a whole gets a second chance: its question part is ranked too, and an entry that fits
both is answered (decide_ranked). The numbers come from `vssbot tune tests/eval tests/heldout`.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import numpy as np
from rapidfuzz import fuzz, process

from intents.index import Index, char_terms, word_terms
from intents.learned import Learned
from intents.normalize import ABBREVIATIONS, ENGLISH_STOPWORDS, Normalized, detect_language, normalize
from knowledge.schema import Entry

DecisionKind = str  # "faq" | "clarify" | "fallback" | "smalltalk" | "handover"


@dataclass(frozen=True)
class MatcherConfig:
    """Weights and thresholds, tuned on the project's labelled evaluation set (tests/eval)."""

    w_bm25: float = 0.2
    w_char: float = 0.2
    w_row_cover: float = 0.1
    w_token_set: float = 0.1
    w_ratio: float = 0.05
    w_entry: float = 0.3
    toned_share: float = 0.5  # of the BM25 signal, for messages typed with diacritics
    # confidence = P(the best entry fits) × P(it beats the next one)
    #            = sigmoid(a · (score - centre)) × sigmoid(b · margin + c · evidence margin - bias):
    # the margin is over the next entry's score; the evidence margin is how much more of the
    # message's idf mass only the best entry's vocabulary holds (none, for a bare topic word that
    # two entries share). Both must hold: a clear winner among poor matches is still unsure.
    conf_slope: float = 8.0
    conf_centre: float = 0.3
    conf_margin: float = 8.0
    conf_evidence: float = 32.0
    margin_bias: float = 2.0
    # The second factor is blended with the learned classifier's opinion (intents/learned.py),
    # its `lead`: how far its probability for the best entry is above its probability for any
    # other entry (negative when it prefers another), softmax at `learned_temperature`:
    # wins = (sigmoid(...) + w_learned · lead) / (1 + w_learned), kept within [0, 1].
    w_learned: float = 0.5
    learned_temperature: float = 0.1
    # The classifier has a say in the ranking too: its probability for an entry (the same softmax),
    # times this, is added to the entry's lexical score. It learned which words tell siblings
    # apart ("tự nguyện" for a voluntary contributor's pension); the lexical score still decides
    # whether the message is about any entry at all.
    w_rank_learned: float = 0.3
    # `vssbot tune tests/eval tests/heldout --max-wrong 0.015` (25 Nov 2026, 7,868 phrasings): the
    # best right share of the weaker set with at most 1.5% wrong on each (a margin under the 2%
    # goal: new questions bring more wrong answers than the sets tuned on show): tests/eval
    # 0.949 / 0.003, tests/heldout 0.911 / 0.014 (min_coverage 0.4 and 0.5 tie: 0.5 keeps "mua
    # iphone ở đâu" out). tests/blind, never tuned on: 0.935 / 0.016. (A confidence × 0.75 where
    # the classifier overruled the index's best entry, and a damping of its lead by how far the
    # vocabularies differ, were tried and came out neutral: gone.)
    answer_confidence: float = 0.3  # answer outright at or above this
    clarify_score: float = 0.3  # below this best lexical score: not sure at all → fallback
    clarify_window: float = 0.08  # options offered: within this of the best score
    conversation_score: float = 0.3  # greeting / handover / out-of-scope recognised at or above
    min_coverage: float = 0.5  # share of the message's idf mass the index knows
    candidate_rows: int = 60
    fuzzy_rows: int = 6  # phrasings of each candidate entry the fuzzy features look at
    max_options: int = 3


@dataclass(frozen=True)
class Candidate:
    entry: Entry
    score: float  # what the entries are ranked by: lexical + w_rank_learned × probability
    evidence: float = 0.0  # share of the message's idf mass found in the entry's vocabulary
    exact: bool = False  # the message is one of the entry's phrasings (once normalised)
    lead: float = 0.0  # the classifier's probability for this entry less its best for another one
    lexical: float = 0.0  # the score from the index's signals alone
    probability: float = 0.0  # the classifier's probability for this entry


@dataclass(frozen=True)
class Decision:
    kind: DecisionKind
    lang: str
    confidence: float
    entry: Entry | None = None  # the answered faq, or the conversational intent recognised
    options: list[Entry] = field(default_factory=list)  # clarify: what to offer
    candidates: list[Candidate] = field(default_factory=list)  # what was considered, best first
    coverage: float = 0.0


# A long message is context, then the question: "Bố em đóng BHXH 17 năm. Tháng trước bố mất. Nhà
# em ai được hưởng tuất?" Its sentences end at . ? ! ; or a line break.
_SENTENCE_END = re.compile(r"(?<=[.?!;\n])\s+")
FOCUS_MIN_WORDS = 6  # a shorter last sentence ("Như vậy có đúng không ạ?") takes the one before too

Ranking = tuple[list["Candidate"], float]  # candidates best first, and the message's coverage


def _best(scores: np.ndarray, among: np.ndarray, k: int) -> np.ndarray:
    """The `k` rows of `among` with the highest scores (all of them if there are fewer)."""
    if len(among) <= k:
        return among
    sub = scores[among]
    return among[np.argpartition(sub, len(sub) - k)[len(sub) - k :]]


def _terms_of_key(key: str) -> list[str]:
    """The classifier's terms of a phrasing from its fold key (what word_terms and char_terms read)."""
    toks = tuple(key.split())
    norm = Normalized(text=key, toned=toks, fold=toks)
    return word_terms(norm) + char_terms(norm)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class Matcher:
    """Built once from the knowledge base's entries (a reload builds a new one: app.bot.Bot)."""

    def __init__(self, entries: list[Entry], config: MatcherConfig | None = None):
        self.config = config or MatcherConfig()
        self.index = Index(entries)
        by_entry: dict[int, list[int]] = {}
        self._row_by_key: dict[str, int] = {}
        vocab: dict[str, set[str]] = {"vi": set(), "en": set()}
        for i, row in enumerate(self.index.rows):
            by_entry.setdefault(row.entry, []).append(i)
            self._row_by_key.setdefault(row.key, i)
            vocab[row.lang].update(row.key.split())
        self._row_ids_by_entry = {e: np.asarray(rows, dtype=np.int64) for e, rows in by_entry.items()}
        # The second opinion, trained on the same phrasings (their fold keys: what the index holds)
        self.learned = Learned([_terms_of_key(row.key) for row in self.index.rows], self.index.row_entry.tolist(),
                               len(entries))
        # Words only the English phrasings use, and words only the Vietnamese ones use: what
        # tells an unaccented Vietnamese message ("can giay to gi") from an English one.
        vocab["en"] |= ENGLISH_STOPWORDS  # dropped from the English rows, but English all the same
        # Chat abbreviations never reach the Vietnamese rows (they are expanded), but an English
        # phrasing may keep one ("is BHYT free for kids"): they tell no language apart, except
        # the English function words among them ("a", "b", "to").
        self._en_only = frozenset(vocab["en"] - vocab["vi"] - (ABBREVIATIONS.keys() - ENGLISH_STOPWORDS))
        self._vi_only = frozenset(vocab["vi"] - vocab["en"])

    def rank(self, norm: Normalized, limit: int = 8, exclude: frozenset[int] = frozenset()) -> Ranking:
        """The best entries for a normalised message, with fused scores, and the coverage.
        `exclude` hides index rows (the leave-one-out self-test holds a phrasing out)."""
        cfg = self.config
        if not norm.fold or self.index.size == 0:
            return [], 0.0
        words = word_terms(norm)
        terms = set(words)  # once: BM25, entry BM25, coverage (and, with the trigrams, the classifier)
        bm25, coverage = self.index.bm25(terms)
        if norm.toned != norm.fold:  # the message has diacritics: let the toned space have a say
            bm25 = (1 - cfg.toned_share) * bm25 + cfg.toned_share * self.index.toned_bm25(norm)
        char, common = self.index.char_cosine_split(norm)
        entry_bm25 = self.index.entry_bm25(terms)
        lexical = cfg.w_bm25 * bm25 + cfg.w_char * char + cfg.w_entry * entry_bm25[self.index.row_entry]
        if exclude:
            lexical[list(exclude)] = -1.0
        pool = _best(lexical, np.arange(self.index.size), cfg.candidate_rows * (4 if common else 1))
        if common:  # make the pool's scores exact with the common trigrams, then take the top
            extra = np.zeros(len(pool), dtype=np.float32)
            for col, scale in common:
                extra += col[pool] * np.float32(scale)
            lexical[pool] += cfg.w_char * extra
            if exclude:
                lexical[list(exclude)] = -1.0
        top = _best(lexical, pool, cfg.candidate_rows)
        best_row: dict[int, int] = {}
        for r in top:
            e = int(self.index.row_entry[r])
            if e not in best_row or lexical[r] > lexical[best_row[e]]:
                best_row[e] = int(r)
        query = norm.fold_key
        exact_row = self._row_by_key.get(query)
        exact_entry = int(self.index.row_entry[exact_row]) if exact_row is not None and exact_row not in exclude else -1
        cover = self.index.row_coverages(terms)
        # The fuzzy features refine: they look at each candidate entry's best few phrasings of
        # the pool (by lexical score), scored by rapidfuzz in two C calls.
        by_entry: dict[int, list[int]] = {e: [] for e in best_row}
        for r in pool[np.argsort(-lexical[pool])]:
            rows = by_entry.get(int(self.index.row_entry[r]))
            if rows is not None and len(rows) < cfg.fuzzy_rows and lexical[r] > -1.0:
                rows.append(int(r))
        groups = [np.asarray(by_entry[e], dtype=np.int64) for e in best_row]
        flat = np.concatenate(groups)
        keys = [self.index.rows[row].key for row in flat]
        fuzzy = (
            cfg.w_token_set * process.cdist([query], keys, scorer=fuzz.token_set_ratio, dtype=np.float32, workers=1)[0]
            + cfg.w_ratio * process.cdist([query], keys, scorer=fuzz.ratio, dtype=np.float32, workers=1)[0]
        ) / 100
        row_cover = cover[flat]
        # The classifier saw every phrasing: with one held out (exclude) it would remember it,
        # so the self-test measures the index alone.
        learned = None if exclude else self._learned(words + char_terms(norm))
        scored: list[Candidate] = []
        start = 0
        for (e, r), g in zip(best_row.items(), groups):
            if not len(g):
                continue
            end = start + len(g)
            best_fuzzy = float(fuzzy[start:end].max())
            best_cover = float(row_cover[start:end].max())
            start = end
            base = float(lexical[r]) + best_fuzzy + cfg.w_row_cover * best_cover
            lead, prob = (float(learned[0][e]), float(learned[1][e])) if learned is not None else (0.0, 0.0)
            scored.append(Candidate(self.index.entries[e], base + cfg.w_rank_learned * prob, float(entry_bm25[e]),
                                    e == exact_entry, lead, base, prob))
        scored.sort(key=lambda c: c.score, reverse=True)
        return scored[:limit], coverage

    def rank_focus(self, text: str, lang: str) -> Ranking | None:
        """The ranking of a long message's question part: its last sentence (the last two when the
        last is short), or None when there is no part shorter than the whole."""
        sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
        if len(sentences) < 2:
            return None
        focus = normalize(sentences[-1], lang=lang)
        if len(focus.fold) < FOCUS_MIN_WORDS:
            if len(sentences) < 3:
                return None
            focus = normalize(" ".join(sentences[-2:]), lang=lang)
        return self.rank(focus)

    def reranked(self, candidates: list[Candidate]) -> list[Candidate]:
        """The candidates scored with the classifier's say (at the configured weight), best first."""
        w = self.config.w_rank_learned
        if all(c.score == c.lexical + w * c.probability for c in candidates):
            return candidates  # ranked at this weight already (rank() did it)
        scored = [replace(c, score=c.lexical + w * c.probability) for c in candidates]
        scored.sort(key=lambda c: c.score, reverse=True)
        return scored

    def _learned(self, terms: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
        """Per entry: the classifier's lead (its probability for the entry less the highest for any
        other entry, an out-of-scope or conversational one too) and its probability; None without
        a classifier."""
        raw = self.learned.scores(terms)
        if raw is None:
            return None
        p = np.exp((raw - raw.max()) / self.config.learned_temperature)
        p /= p.sum()
        first = int(np.argmax(p))
        runner_up = float(np.max(np.delete(p, first)))
        leads = p - p[first]
        leads[first] = p[first] - runner_up
        return leads, p

    def rows_of(self, entry: int) -> list[int]:
        return [int(r) for r in self._row_ids_by_entry.get(entry, [])]

    def language(self, text: str) -> str:
        """"vi" or "en": diacritics settle it; otherwise which phrasings' words the message uses."""
        guess = detect_language(text)
        if guess == "vi" and any(ord(c) > 0x7F for c in text):
            return "vi"
        words = normalize(text, drop_fillers=False, lang="en").fold  # as typed, unexpanded
        en = sum(w in self._en_only for w in words)
        vi = sum(w in self._vi_only for w in words)
        if en == vi:
            return guess
        return "en" if en > vi else "vi"

    def confidence(self, score: float, margin: float, evidence_margin: float = 0.0, lead: float | None = None) -> float:
        """P(fits) × P(wins). The classifier's `lead` has a say in the second only: it learned
        which words tell entries apart, but ignores the words it has never seen, so it cannot
        tell whether the message is about any of them at all ("mua iphone ở đâu")."""
        cfg = self.config
        fits = _sigmoid(cfg.conf_slope * (score - cfg.conf_centre))
        wins = _sigmoid(cfg.conf_margin * margin + cfg.conf_evidence * evidence_margin - cfg.margin_bias)
        if lead is not None:
            # ... nor raise it when both entries' vocabularies hold exactly the same share of the
            # message (a bare topic word they share): what it prefers then is its prior.
            if abs(evidence_margin) < 1e-9:
                lead = min(lead, 0.0)
            wins = min(1.0, max(0.0, (wins + cfg.w_learned * lead) / (1 + cfg.w_learned)))
        return fits * wins

    def decide(self, text: str, lang: str | None = None) -> Decision:
        detected = self.language(text)
        candidates, coverage = self.rank(normalize(text, lang=detected))  # ranked at the configured weight
        decision = self._decide(candidates, coverage, lang or detected)
        if not _may_focus(decision):
            return decision  # the question part is ranked only when it may help
        return self._refocused(decision, candidates, coverage, lang or detected, self.rank_focus(text, detected))

    def decide_ranked(self, candidates: list[Candidate], coverage: float, lang: str,
                      focus: Ranking | None = None) -> Decision:
        """The decision from ranked candidates (separate from ranking, so thresholds can be tuned:
        the candidates are re-ranked if the weight changed). `focus` is the ranking of the
        message's question part (rank_focus)."""
        candidates = self.reranked(candidates)
        decision = self._decide(candidates, coverage, lang)
        if not _may_focus(decision):
            return decision
        return self._refocused(decision, candidates, coverage, lang, focus)

    def _refocused(self, decision: Decision, candidates: list[Candidate], coverage: float, lang: str,
                   focus: Ranking | None) -> Decision:
        """When the whole message is not answered (its story words dilute every score), an entry
        may still be answered if it fits the question part and the whole message together (their
        signals averaged)."""
        if focus is None or not focus[0]:
            return decision
        merged = self._decide(_averaged(candidates, self.reranked(focus[0])), max(coverage, focus[1]), lang)
        if merged.kind == "faq" or (merged.kind == "clarify" and decision.kind == "fallback"):
            return merged
        return decision

    def _decide(self, candidates: list[Candidate], coverage: float, lang: str) -> Decision:
        cfg = self.config
        if not candidates:
            return Decision("fallback", lang, 0.0, candidates=[], coverage=coverage)
        best = candidates[0]
        faqs = [c for c in candidates if c.entry.kind == "faq"]
        conv = [c for c in candidates if c.entry.kind != "faq"]
        best_faq_score = faqs[0].score if faqs else 0.0

        # Whether the message is about an entry at all is the lexical score's to say (the
        # classifier ignores the words it does not know: "mua vé máy bay" is all "mua" to it);
        # which entry it is about is the combined score's.
        # Conversational intents win when they are recognised and no answer fits better.
        if conv and conv[0] is best and best.lexical >= cfg.conversation_score:
            kind = {"smalltalk": "smalltalk", "handover": "handover"}.get(best.entry.kind, "fallback")
            conf = self.confidence(best.lexical, best.score - best_faq_score)
            return Decision(kind, lang, round(conf, 3), entry=best.entry, candidates=candidates, coverage=coverage)

        if not faqs or coverage < cfg.min_coverage:
            return Decision("fallback", lang, 0.0, candidates=candidates, coverage=coverage)
        top = faqs[0]
        second = faqs[1] if len(faqs) > 1 else Candidate(top.entry, 0.0, 0.0)
        margin, evidence_margin = top.score - second.score, top.evidence - second.evidence
        if abs(evidence_margin) < 1e-9:
            # Both vocabularies hold the same share of the message (a bare topic word they share):
            # the classifier's preference is then its prior, and must not make a lead.
            margin = min(margin, top.lexical - second.lexical)
        conf = self.confidence(top.lexical, margin, evidence_margin, top.lead)
        if top.exact:
            # The message is literally one of this entry's phrasings, and validation keeps a
            # phrasing in one entry only: the choice between entries is made; only the fit counts.
            conf = self.confidence(top.lexical, 1.0, 1.0)
        if conf >= cfg.answer_confidence:
            return Decision("faq", lang, round(conf, 3), entry=top.entry, candidates=candidates, coverage=coverage)
        if top.lexical >= cfg.clarify_score:
            # close by either measure: the classifier alone may have pulled two siblings apart
            near = [c for c in faqs if c.score >= top.score - cfg.clarify_window or c.lexical >= top.lexical - cfg.clarify_window]
            options = [c.entry for c in near][: cfg.max_options]
            return Decision("clarify", lang, round(conf, 3), options=options, candidates=candidates, coverage=coverage)
        return Decision("fallback", lang, round(conf, 3), candidates=candidates, coverage=coverage)


def _may_focus(decision: Decision) -> bool:
    """Whether the question part may still be answered: the whole message was neither answered
    nor recognised as a conversational or out-of-scope message."""
    return decision.kind in ("clarify", "fallback") and decision.entry is None


def _averaged(whole: list[Candidate], focus: list[Candidate]) -> list[Candidate]:
    """The entries of two rankings with every signal averaged: the question part says what is
    asked, the whole message whose case it is. An entry missing from one ranking takes that
    ranking's lowest candidate's signals (it ranked below all of them)."""
    if not whole:
        return focus
    mine, theirs = {c.entry.id: c for c in whole}, {c.entry.id: c for c in focus}
    floor_w, floor_f = whole[-1], focus[-1]
    out = []
    for key in mine.keys() | theirs.keys():
        a = mine.get(key) or replace(floor_w, entry=theirs[key].entry)
        b = theirs.get(key) or replace(floor_f, entry=a.entry)
        out.append(Candidate(a.entry, (a.score + b.score) / 2, (a.evidence + b.evidence) / 2, False,
                             (a.lead + b.lead) / 2, (a.lexical + b.lexical) / 2, (a.probability + b.probability) / 2))
    out.sort(key=lambda c: c.score, reverse=True)
    return out[: len(whole)]
