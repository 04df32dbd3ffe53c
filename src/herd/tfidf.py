"""TF-IDF features that fit in milliseconds on any subset of a counted corpus.

Cross-validation fits TF-IDF on dozens of overlapping subsets of one dataset (every outer fold,
every inner fold of a tuned policy). Tokenizing and counting word n-grams is nearly all of that
work, and it is the same for a text every time. So the texts are counted once (``count``), and
fitting on any of them is column arithmetic on those counts that reproduces scikit-learn's
``TfidfVectorizer(**TFIDF_PARAMS).fit`` exactly: the same vocabulary in the same order, the
same idf, the same rows. Texts that were not counted (new queries, live traffic) go through
scikit-learn's own counting with the fitted vocabulary.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections import Counter, defaultdict
from functools import cached_property

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

from herd.errors import UsageError

NGRAMS = (1, 2)
MIN_DF = 2
MAX_FEATURES = 50_000
# What TfidfVectorizer(ngram_range=NGRAMS, min_df=MIN_DF, max_features=MAX_FEATURES,
# sublinear_tf=True, dtype=np.float32) does, in its two public halves.
TRANSFORM_PARAMS = dict(norm="l2", use_idf=True, smooth_idf=True, sublinear_tf=True)
# Live routing transforms a query or two, where scikit-learn's checks of its input cost
# milliseconds per call; up to this many uncounted texts the same arithmetic is done directly.
FEW_TEXTS = 16


class NgramCounts:
    """Word n-gram counts of a set of texts, one row per distinct text, columns in alphabetical
    term order (as scikit-learn sorts its vocabulary).

    The same terms, columns and counts as ``CountVectorizer(ngram_range=NGRAMS).fit_transform``,
    with its own analyzer, counted about twice as fast: each text's n-grams by ``Counter`` and
    the vocabulary sorted once, where scikit-learn also walks every term in Python to sort and
    filter it (nothing is filtered here)."""

    def __init__(self, texts: list[str]):
        unique = list(dict.fromkeys(texts))
        analyze = CountVectorizer(ngram_range=NGRAMS).build_analyzer()
        first_seen: dict[str, int] = defaultdict()
        first_seen.default_factory = first_seen.__len__  # a new term gets the next number
        number = first_seen.__getitem__
        found, counts, indptr = [], [], [0]
        for text in unique:
            grams = Counter(analyze(text))
            found.extend(map(number, grams))
            counts.extend(grams.values())
            indptr.append(len(found))
        if not first_seen:
            raise ValueError("empty vocabulary; perhaps the documents only contain stop words")
        seen = list(first_seen)
        order = sorted(range(len(seen)), key=seen.__getitem__)
        index = np.int32 if len(found) <= np.iinfo(np.int32).max else np.int64
        column_of = np.empty(len(seen), dtype=index)
        column_of[order] = np.arange(len(seen), dtype=index)
        self.counts = sp.csr_matrix((np.fromiter(counts, np.float32, len(counts)),
                                     column_of[np.fromiter(found, index, len(found))], np.asarray(indptr, index)),
                                    shape=(len(unique), len(seen)))
        self.counts.sort_indices()
        self.terms = _object_array([seen[i] for i in order])
        self.row = {text: i for i, text in enumerate(unique)}

    @cached_property
    def column(self) -> dict[str, int]:
        """Term -> column (read only for a model fitted on another corpus)."""
        return dict(zip(self.terms.tolist(), range(len(self.terms))))

    def __getstate__(self) -> dict:
        # Carried to worker processes: a few hundred thousand terms pickle one by one in about a
        # second, as one string joined by a newline (which no term holds) in milliseconds.
        terms = self.terms.tolist()
        joined = "\n".join(terms)
        return {"counts": self.counts, "texts": list(self.row),
                "terms": joined if joined.count("\n") == len(terms) - 1 else terms}

    def __setstate__(self, state: dict) -> None:
        terms = state["terms"]
        self.counts = state["counts"]
        self.terms = _object_array(terms.split("\n") if isinstance(terms, str) else terms)
        self.row = {text: i for i, text in enumerate(state["texts"])}

    def rows(self, texts: list[str]) -> np.ndarray | None:
        """Row indices of ``texts``, or None when any of them was not counted."""
        try:
            return np.fromiter((self.row[t] for t in texts), dtype=np.int64, count=len(texts))
        except KeyError:
            return None


def _object_array(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


_corpus: NgramCounts | None = None
_lock = threading.Lock()


def count(texts: list[str]) -> NgramCounts:
    """Count ``texts`` once; later fits and transforms on any of them read these counts. One
    corpus is kept (the latest dataset), so memory stays bounded by one dataset's counts."""
    global _corpus
    with _lock:
        corpus = _corpus
    if corpus is not None and corpus.rows(texts) is not None:
        return corpus
    corpus = NgramCounts(texts)
    with _lock:
        _corpus = corpus
    return corpus


def corpus_of(texts: list[str]) -> NgramCounts | None:
    """The counted corpus that holds every one of ``texts``, if there is one."""
    found = _counted(texts)
    return None if found is None else found[0]


def adopt(corpus: NgramCounts) -> None:
    """Make ``corpus`` (counted in another process) the one later fits and transforms read."""
    global _corpus
    with _lock:
        _corpus = corpus


def _counted(texts: list[str]) -> tuple[NgramCounts, np.ndarray] | None:
    with _lock:
        corpus = _corpus
    if corpus is None:
        return None
    rows = corpus.rows(texts)
    return None if rows is None else (corpus, rows)


def _count_rows(texts: list[str]) -> tuple[NgramCounts, np.ndarray]:
    corpus = count(texts)
    return corpus, corpus.rows(texts)


class Tfidf:
    """TF-IDF over word 1-2-grams: unit rows, sublinear tf, terms in at least MIN_DF training
    texts, the MAX_FEATURES most frequent kept."""

    def fit(self, texts: list[str]) -> Tfidf:
        _check_texts(texts)
        corpus, rows = _counted(texts) or _count_rows(texts)
        x = corpus.counts[rows]
        kept = _kept_columns(x)
        if len(kept) == 0:
            raise UsageError(f"TF-IDF: no word appears in {MIN_DF} or more of the {len(texts)} training texts")
        self.terms_ = corpus.terms[kept]
        self.transformer_ = TfidfTransformer(**TRANSFORM_PARAMS).fit(x[:, kept])
        self._columns = (weakref.ref(corpus), kept)  # weak: a model does not keep an old corpus alive
        return self

    def transform(self, texts: list[str]):
        """(n_texts, n_terms) sparse float32 TF-IDF rows."""
        _check_texts(texts)
        found = _counted(texts)
        if found is not None:
            corpus, rows = found
            columns = self._columns_in(corpus)
            if columns is not None:
                return self.transformer_.transform(corpus.counts[rows][:, columns])
        if len(texts) <= FEW_TEXTS:
            return self._few(texts)
        return self.transformer_.transform(self._counter().transform(texts))

    def _few(self, texts: list[str]):
        """``transformer_.transform(_counter().transform(texts))``, the same rows, built one by one."""
        rows = [self.row(text) for text in texts]
        indptr = np.cumsum([0] + [len(columns) for columns, _ in rows], dtype=np.int32)
        return sp.csr_matrix((np.concatenate([v for _, v in rows]), np.concatenate([c for c, _ in rows]), indptr),
                             shape=(len(texts), len(self.transformer_.idf_)), dtype=np.float32)

    def row(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """One text's TF-IDF row as (columns, values), as scikit-learn computes it: term counts,
        1 + log(tf), times idf, unit length (float32 squares summed in float64). A live query is scored
        from this without building a sparse matrix, which costs more than the arithmetic."""
        if not isinstance(text, str):
            raise TypeError(f"TF-IDF reads texts, got {type(text).__name__}")
        find, idf = self._counter().vocabulary.get, self.transformer_.idf_
        counts: dict[int, int] = {}
        for term in self._analyze(text):
            j = find(term)
            if j is not None:
                counts[j] = counts.get(j, 0) + 1
        order = sorted(counts)  # column order, as in scikit-learn's rows
        columns = np.array(order, np.int32)
        weights = np.log(np.array([counts[j] for j in order], np.float32))
        weights += np.float32(1)
        weights *= idf[columns]  # in place, in float32, as scikit-learn does
        norm = math.sqrt((weights * weights).sum(dtype=np.float64))
        return columns, (weights / np.float64(norm)).astype(np.float32) if norm > 0 else weights

    def _analyze(self, text: str) -> list[str]:
        if getattr(self, "_analyzer_", None) is None:  # built once: scikit-learn builds it on every call
            self._analyzer_ = self._counter().build_analyzer()
        return self._analyzer_(text)

    def _columns_in(self, corpus: NgramCounts) -> np.ndarray | None:
        """The corpus's columns of this model's terms (None if it lacks one), found once per corpus."""
        seen, columns = getattr(self, "_columns", (lambda: None, None))
        if seen() is not corpus:
            columns = np.fromiter((corpus.column.get(t, -1) for t in self.terms_), dtype=np.int64, count=len(self.terms_))
            columns = None if (columns < 0).any() else columns
            self._columns = (weakref.ref(corpus), columns)
        return columns

    def _counter(self) -> CountVectorizer:
        """scikit-learn's counting with this model's vocabulary, for texts that were not counted."""
        if getattr(self, "_counter_", None) is None:
            self._counter_ = CountVectorizer(ngram_range=NGRAMS, dtype=np.float32,
                                             vocabulary={t: j for j, t in enumerate(self.terms_)})
        return self._counter_

    def __getstate__(self) -> dict:  # saved without the corpus it was fitted on or caches
        return {k: v for k, v in self.__dict__.items() if k not in ("_columns", "_counter_", "_analyzer_")}

    def __setstate__(self, state: dict) -> None:
        # The first saved form of this class kept scikit-learn's counter instead of its terms.
        if "terms_" not in state and "counter_" in state:
            state["terms_"] = np.array(list(state.pop("counter_").vocabulary), dtype=object)
        self.__dict__.update(state)


def _check_texts(texts) -> None:
    if isinstance(texts, str):  # a string is an iterable of one-letter texts: never what was meant
        raise TypeError("TF-IDF takes a list of texts, not one string")


def _kept_columns(x) -> np.ndarray:
    """Columns of the count rows ``x`` that scikit-learn's vectorizer keeps, in its order:
    document frequency at least MIN_DF, then the MAX_FEATURES highest term frequencies (its
    own, unstable, sort on the same array, so ties break the same way)."""
    df = np.bincount(x.indices, minlength=x.shape[1])
    mask = df >= MIN_DF
    if mask.sum() > MAX_FEATURES:
        tf = np.asarray(x.sum(axis=0)).ravel()
        top = (-tf[mask]).argsort()[:MAX_FEATURES]
        chosen = np.zeros(len(mask), dtype=bool)
        chosen[np.where(mask)[0][top]] = True
        mask = chosen
    return np.where(mask)[0]
