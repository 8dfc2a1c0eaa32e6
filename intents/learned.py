"""A linear classifier trained on the phrasings: the matcher's second, learned opinion.

The lexical scores (intents/index.py) say how well a message fits each entry's phrasings, weighing
a word by how rare it is in the whole knowledge base. They cannot learn which words tell two
sibling entries apart ("mấy năm" for the years needed for a pension, "bao nhiêu tiền" for the
minimum contribution): a linear SVM can. It is trained on every phrasing (one class per entry)
over the terms the index uses (syllable unigrams and bigrams of the fold, character trigrams),
TF-IDF weighted, with scikit-learn's LinearSVC (liblinear: ~1.5 s for the shipped knowledge base).
The matcher adds how clearly it prefers the lexical best entry to the confidence (matcher.py).

Weights under 1e-3 in size are dropped (88% of them for the shipped knowledge base: a term that
no support vector of an entry holds): the rest is kept as a sparse matrix, term × entry, of which
a message reads the rows of its own terms only.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy.sparse import csr_matrix
from sklearn.svm import LinearSVC

PRUNE = 1e-3


def _features(counts: Counter[str], columns: dict[str, int], idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A document's known terms as columns and TF-IDF weights (sublinear tf, L2-normalised), as
    scikit-learn's TfidfVectorizer(sublinear_tf=True) computes them."""
    known = [(columns[t], 1.0 + math.log(n)) for t, n in counts.items() if t in columns]
    if not known:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    col_arr = np.asarray([c for c, _ in known], dtype=np.int64)
    vals = np.asarray([tf for _, tf in known]) * idf[col_arr]
    return col_arr, vals / np.linalg.norm(vals)


class Learned:
    """Trained once from (terms of a phrasing, its label); `scores` of a message for every label."""

    def __init__(self, docs: Sequence[list[str]], labels: Sequence[int], n_labels: int, c: float = 1.0):
        df: Counter[str] = Counter()
        for d in docs:
            df.update(set(d))
        terms = sorted(df)
        self.columns = {t: i for i, t in enumerate(terms)}
        n = len(docs)
        self.idf = np.asarray([math.log((1 + n) / (1 + df[t])) + 1 for t in terms], dtype=np.float64)
        self.weights: csr_matrix | None = None  # term × label
        self.intercept = np.zeros(n_labels, dtype=np.float32)
        self.trained = np.zeros(n_labels, dtype=bool)
        classes = np.unique(np.asarray(labels))
        if len(classes) < 2:
            return  # nothing to tell apart
        rows, cols, vals = [], [], []
        for i, d in enumerate(docs):
            c_, v_ = _features(Counter(d), self.columns, self.idf)
            rows.append(np.full(len(c_), i))
            cols.append(c_)
            vals.append(v_)
        x = csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, len(terms)))
        svc = LinearSVC(C=c, random_state=0).fit(x, np.asarray(labels))
        coef, intercept = svc.coef_, svc.intercept_
        if len(classes) == 2:  # one decision function for both: the second class's, negated for the first
            coef, intercept = np.vstack([-coef[0], coef[0]]), np.asarray([-intercept[0], intercept[0]])
        # term × label: a message touches only the rows of its own terms
        self.weights = csr_matrix(np.where(np.abs(coef) >= PRUNE, coef, 0.0).astype(np.float32).T)
        self._labels = classes
        self.intercept[classes] = intercept
        self.trained[classes] = True

    def scores(self, terms: list[str], labels: np.ndarray | None = None) -> np.ndarray | None:
        """The decision value of each label (or of `labels`) for a message's terms (-inf for a
        label not trained), or None if there is no classifier (fewer than two labels)."""
        if self.weights is None:
            return None
        cols, vals = _features(Counter(terms), self.columns, self.idf)
        every = self.intercept.copy()
        if len(cols):
            every[self._labels] += self.weights[cols].T @ vals.astype(np.float32)
        every[~self.trained] = -np.inf
        return every if labels is None else every[labels]
