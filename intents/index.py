"""The search index, built once from the knowledge base: every phrasing is a row pointing to its entry.

Lexical signals (matching.md §4, §6):
- BM25 over syllable unigrams and bigrams, normalised by the query's total idf, so that a score
  near 1 means "every distinctive word of the message is in this phrasing" and words the index
  has never seen pull the score down (what keeps out-of-domain messages out): per phrasing in the
  diacritic-free fold space and in the toned space, and per entry over all its phrasings;
- how much of each phrasing's idf mass the message covers;
- TF-IDF cosine over character trigrams, which absorbs typos and missing spaces ("1lan").
Postings are numpy arrays summed with one `bincount`, so a query costs a few array operations.
"""
from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from intents.normalize import Normalized, normalize
from knowledge.schema import Entry

K1 = 1.2
B = 0.75


def word_terms(norm: Normalized) -> list[str]:
    toks = norm.fold
    return list(toks) + [f"{a}_{b}" for a, b in zip(toks, toks[1:])]


def toned_terms(norm: Normalized) -> list[str]:
    toks = norm.toned
    return list(toks) + [f"{a}_{b}" for a, b in zip(toks, toks[1:])]


def char_terms(norm: Normalized) -> list[str]:
    grams: list[str] = []
    for tok in norm.fold:
        padded = f" {tok} "
        grams.extend(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


@dataclass(frozen=True)
class Row:
    entry: int  # index into Index.entries
    lang: str  # "vi" or "en": which list the phrasing came from
    key: str  # fold key, for the fuzzy features
    text: str  # the phrasing as written


class _Postings:
    """term → (row ids, weights), plus each term's idf."""

    def __init__(self) -> None:
        self.rows: dict[str, np.ndarray] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.idf: dict[str, float] = {}
        self.max_idf = 1.0

    def freeze(self, acc: dict[str, tuple[list[int], list[float]]], idf: dict[str, float]) -> None:
        self.rows = {t: np.asarray(r, dtype=np.int32) for t, (r, _) in acc.items()}
        self.weights = {t: np.asarray(w, dtype=np.float32) for t, (_, w) in acc.items()}
        self.idf = idf
        self.max_idf = max(idf.values(), default=1.0)


class Index:
    """Rows of phrasings over the given entries, searchable by a normalised message."""

    def __init__(self, entries: list[Entry]):
        self.entries = entries
        self.rows: list[Row] = []
        word_docs: list[list[str]] = []
        toned_docs: list[list[str]] = []
        char_docs: list[Counter[str]] = []
        entry_docs: list[list[str]] = []
        for i, entry in enumerate(entries):
            # Keywords are vocabulary, not questions: they join the entry's whole document, never
            # a row of their own, so a bare topic word ("lương hưu") cannot match one entry exactly.
            entry_docs.append([t for k in entry.keywords for t in word_terms(normalize(k))])
            phrasings = [(q, "vi") for q in entry.questions_vi]
            phrasings += [(q, "en") for q in entry.questions_en]
            seen: set[str] = set()
            for text, lang in phrasings:
                norm = normalize(text, lang=lang)
                if not norm.fold or norm.fold_key in seen:
                    continue
                seen.add(norm.fold_key)
                terms = word_terms(norm)
                self.rows.append(Row(i, lang, norm.fold_key, text))
                word_docs.append(terms)
                toned_docs.append(toned_terms(norm))
                entry_docs[i].extend(terms)
                char_docs.append(Counter(char_terms(norm)))
        self.size = len(self.rows)
        self.row_entry = np.asarray([r.entry for r in self.rows], dtype=np.int32)
        self.words = self._build_bm25(word_docs)
        # The same in the toned space: for accented messages it tells homographs of the fold
        # apart (hàn/hạn, sổ/số, thẻ/thế), as matching.md §3 suggests.
        self.toned = self._build_bm25(toned_docs)
        self.chars = self._build_tfidf(char_docs)
        # Trigrams in more than a tenth of the rows (" th", "ng ") make up most of the postings
        # a query walks and move few rows apart: they are kept as dense columns and added only
        # for a pool of the best rows (Matcher.rank), which leaves the scores of those rows exact.
        self.common_chars: dict[str, np.ndarray] = {}
        for t in [t for t, r in self.chars.rows.items() if len(r) > self.size // 10]:
            col = np.zeros(self.size, dtype=np.float32)
            col[self.chars.rows[t]] = self.chars.weights[t]
            self.common_chars[t] = col
            del self.chars.rows[t], self.chars.weights[t]
        # One document an entry (all phrasings and keywords): a message whose words are spread
        # over several phrasings of the same entry still finds it.
        self.entry_words = self._build_bm25([sorted(set(d)) for d in entry_docs])
        row_idf = np.asarray([sum(self.words.idf[t] for t in set(d)) for d in word_docs], dtype=np.float64)
        self._inv_row_idf = np.divide(1.0, row_idf, out=np.zeros_like(row_idf), where=row_idf > 0).astype(np.float32)

    def _build_bm25(self, docs: list[list[str]]) -> _Postings:
        n = max(1, len(docs))
        avgdl = sum(len(d) for d in docs) / n or 1.0
        df: Counter[str] = Counter()
        for d in docs:
            df.update(set(d))
        idf = {t: math.log(1 + (n - c + 0.5) / (c + 0.5)) for t, c in df.items()}
        acc: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for row, d in enumerate(docs):
            norm_len = K1 * (1 - B + B * len(d) / avgdl)
            for t, tf in Counter(d).items():
                # tf saturation divided by its ceiling (k1+1): a weight never exceeds the idf
                w = idf[t] * (tf * (K1 + 1) / (tf + norm_len)) / (K1 + 1)
                acc[t][0].append(row)
                acc[t][1].append(w)
        p = _Postings()
        p.freeze(acc, idf)
        return p

    def _build_tfidf(self, docs: list[Counter[str]]) -> _Postings:
        n = max(1, len(docs))
        df: Counter[str] = Counter()
        for d in docs:
            df.update(d.keys())
        idf = {t: math.log((1 + n) / (1 + c)) + 1 for t, c in df.items()}
        acc: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
        for row, d in enumerate(docs):
            vec = {t: (1 + math.log(tf)) * idf[t] for t, tf in d.items()}
            length = math.sqrt(sum(v * v for v in vec.values())) or 1.0
            for t, v in vec.items():
                acc[t][0].append(row)
                acc[t][1].append(v / length)
        p = _Postings()
        p.freeze(acc, idf)
        return p

    def bm25(self, terms: set[str]) -> tuple[np.ndarray, float]:
        """Per-row BM25 of a message's word terms ÷ their total idf (unknown words at the highest
        idf), and the share of that idf mass the index knows at all (its coverage)."""
        return _bm25(self.words, self.size, terms)

    def toned_bm25(self, norm: Normalized) -> np.ndarray:
        return _bm25(self.toned, self.size, set(toned_terms(norm)))[0]

    def entry_bm25(self, terms: set[str]) -> np.ndarray:
        """Per-entry BM25 over each entry's whole vocabulary, ÷ the query's total idf."""
        return _bm25(self.entry_words, len(self.entries), terms)[0]

    def row_coverages(self, query_terms: set[str]) -> np.ndarray:
        """Each row's share of its own idf mass that the message's terms cover: the idf of each
        query term the index knows, summed over the rows that contain it (its postings)."""
        known = [t for t in query_terms if t in self.words.idf]
        if not known:
            return np.zeros(self.size, dtype=np.float32)
        rows = [self.words.rows[t] for t in known]
        weights = np.repeat(np.asarray([self.words.idf[t] for t in known]), [len(r) for r in rows])
        return np.bincount(np.concatenate(rows), weights=weights, minlength=self.size).astype(np.float32) * self._inv_row_idf

    def char_cosine(self, norm: Normalized) -> np.ndarray:
        """The trigram cosine of every row."""
        scores, common = self.char_cosine_split(norm)
        for col, scale in common:
            scores += col * np.float32(scale)
        return scores

    def char_cosine_split(self, norm: Normalized) -> tuple[np.ndarray, list[tuple[np.ndarray, float]]]:
        """The cosine over the rarer trigrams for every row, and the common trigrams' dense
        columns with their query weights, to add for the rows that matter."""
        counts = Counter(char_terms(norm))
        vec = {t: (1 + math.log(tf)) * self.chars.idf.get(t, self.chars.max_idf) for t, tf in counts.items()}
        length = math.sqrt(sum(v * v for v in vec.values())) or 1.0
        rows: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        common: list[tuple[np.ndarray, float]] = []
        for t, v in vec.items():
            r = self.chars.rows.get(t)
            if r is not None:
                rows.append(r)
                weights.append(self.chars.weights[t] * (v / length))
            elif t in self.common_chars:
                common.append((self.common_chars[t], v / length))
        return _accumulate(self.size, rows, weights), common


def _accumulate(size: int, rows: list[np.ndarray], weights: list[np.ndarray]) -> np.ndarray:
    """Σ of postings into a per-row array in one C pass (np.bincount), instead of one
    fancy-indexed `scores[rows] += w` (a gather and a scatter) per term."""
    if not rows:
        return np.zeros(size, dtype=np.float32)
    return np.bincount(np.concatenate(rows), weights=np.concatenate(weights), minlength=size).astype(np.float32)


def _bm25(p: _Postings, size: int, terms: set[str]) -> tuple[np.ndarray, float]:
    total = known = 0.0
    rows: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for t in terms:
        idf = p.idf.get(t)
        if idf is None:
            # an unknown bigram of two known words says little; an unknown word says a lot
            total += p.max_idf * (0.5 if "_" in t else 1.0)
            continue
        total += idf
        known += idf
        rows.append(p.rows[t])
        weights.append(p.weights[t])
    scores = _accumulate(size, rows, weights)
    if total <= 0:
        return scores, 0.0
    return scores / total, known / total
