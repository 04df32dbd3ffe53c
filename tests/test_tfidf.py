"""Counted TF-IDF gives exactly what scikit-learn's TfidfVectorizer gives on the same texts."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from herd import tfidf

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()


def _texts(n, seed):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(1, 12))) + f" Q{i % 7}" for i in range(n)]


def _reference(texts, max_features):
    return TfidfVectorizer(ngram_range=tfidf.NGRAMS, min_df=tfidf.MIN_DF, max_features=max_features,
                           sublinear_tf=True, dtype=np.float32).fit(texts)


def _same(a, b):
    a, b = a.tocsr(), b.tocsr()
    a.sort_indices(), b.sort_indices()
    assert a.shape == b.shape
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)  # bitwise


@pytest.mark.parametrize("max_features", [40, 10_000])  # with and without the frequency cut (ties included)
def test_subsets_of_a_counted_corpus_fit_as_the_vectorizer_does(monkeypatch, max_features):
    monkeypatch.setattr(tfidf, "MAX_FEATURES", max_features)
    monkeypatch.setattr(tfidf, "_corpus", None)
    texts = _texts(300, 0)
    tfidf.count(texts)
    rng = np.random.default_rng(1)
    for _ in range(3):
        train = [texts[i] for i in rng.choice(len(texts), 200, replace=True)]  # duplicates count twice
        test = [texts[i] for i in rng.choice(len(texts), 50, replace=False)] + ["kappa mu unseen words"]
        ours, ref = tfidf.Tfidf().fit(train), _reference(train, max_features)
        assert list(ours.terms_) == list(ref.get_feature_names_out())
        np.testing.assert_array_equal(ours.transformer_.idf_, ref.idf_)
        _same(ours.transform(train), ref.transform(train))
        _same(ours.transform(test), ref.transform(test))  # one text not counted: scikit-learn's path


def test_uncounted_texts_are_counted_on_fit_and_a_new_corpus_replaces_the_old(monkeypatch):
    monkeypatch.setattr(tfidf, "_corpus", None)
    first, second = _texts(80, 2), _texts(60, 3)
    model = tfidf.Tfidf().fit(first)
    assert tfidf._corpus is not None and tfidf._corpus.rows(first) is not None
    tfidf.count(second)
    assert tfidf._corpus.rows(first) is None
    _same(model.transform(first), _reference(first, tfidf.MAX_FEATURES).transform(first))


def test_no_shared_word_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(tfidf, "_corpus", None)
    with pytest.raises(ValueError, match="no word appears in 2 or more"):
        tfidf.Tfidf().fit(["one", "two", "three"])


def test_a_saved_model_transforms_new_texts_without_its_corpus(monkeypatch, tmp_path):
    import pickle

    monkeypatch.setattr(tfidf, "_corpus", None)
    texts = _texts(120, 4)
    model = tfidf.Tfidf().fit(texts)
    blob = pickle.dumps(model)
    assert len(blob) < 20_000  # the terms and idf, not the corpus's counts
    monkeypatch.setattr(tfidf, "_corpus", None)
    _same(pickle.loads(blob).transform(texts[:5]), _reference(texts, tfidf.MAX_FEATURES).transform(texts[:5]))


def test_a_few_uncounted_texts_get_scikit_learns_rows(monkeypatch):
    """Live queries skip scikit-learn's per-call checks: the rows must be the ones it computes,
    for texts with repeated, unknown, non-ASCII and no known terms at all."""
    monkeypatch.setattr(tfidf, "_corpus", None)
    texts = _texts(300, seed=3)
    fitted = tfidf.Tfidf().fit(texts)
    monkeypatch.setattr(tfidf, "_corpus", None)  # as in a served router: nothing counted
    odd = ["", "zzqx unknownword", "alpha alpha alpha beta " + texts[1], "Ünïcödé " + texts[2], "?!", texts[3] * 3]
    for batch in [texts[:1], texts[:tfidf.FEW_TEXTS], odd, [odd[0]]]:
        fast = fitted.transform(batch)
        assert fast.dtype == np.float32
        _same(fast, fitted.transformer_.transform(fitted._counter().transform(batch)))
        _same(fast, _reference(texts, tfidf.MAX_FEATURES).transform(batch))


def test_one_string_is_refused_not_read_as_letters(monkeypatch):
    monkeypatch.setattr(tfidf, "_corpus", None)
    model = tfidf.Tfidf().fit(_texts(50, 5))
    with pytest.raises(TypeError, match="list of texts"):
        model.transform("alpha beta")
    with pytest.raises(TypeError, match="list of texts"):
        tfidf.Tfidf().fit("alpha beta gamma")


def test_the_first_saved_form_loads(monkeypatch):
    """A model saved while it kept scikit-learn's counter (not its terms) still transforms."""
    import pickle

    from sklearn.feature_extraction.text import CountVectorizer

    monkeypatch.setattr(tfidf, "_corpus", None)
    texts = _texts(100, 6)
    model = tfidf.Tfidf().fit(texts)
    old = tfidf.Tfidf.__new__(tfidf.Tfidf)
    old.__dict__.update(transformer_=model.transformer_, counter_=CountVectorizer(
        ngram_range=tfidf.NGRAMS, dtype=np.float32, vocabulary={t: j for j, t in enumerate(model.terms_)}))
    monkeypatch.setattr(tfidf, "_corpus", None)
    loaded = pickle.loads(pickle.dumps(old))
    _same(loaded.transform(texts[:20]), _reference(texts, tfidf.MAX_FEATURES).transform(texts[:20]))


def test_counts_are_scikit_learns_counts():
    """The counted corpus holds CountVectorizer's vocabulary, columns and counts, bit for bit:
    repeated, one-letter, non-ASCII, upper-case and word-less texts, and texts given twice."""
    from sklearn.feature_extraction.text import CountVectorizer

    texts = [*_texts(200, 7), "Ünïcödé wörds, ÜNÏCÖDÉ wörds", "a b c", "?!", "x", "alpha alpha alpha beta",
             "under_score and hy-phen 3.14 42 42", "", _texts(1, 8)[0] * 40]
    texts += texts[:30]
    ours = tfidf.NgramCounts(texts)
    reference = CountVectorizer(ngram_range=tfidf.NGRAMS, dtype=np.float32)
    counts = reference.fit_transform(list(dict.fromkeys(texts)))
    assert list(ours.terms) == list(reference.get_feature_names_out()) and ours.terms.dtype == object
    assert ours.column == reference.vocabulary_
    assert ours.counts.dtype == np.float32 and ours.counts.has_sorted_indices
    _same(ours.counts, counts)
    assert ours.row == {t: i for i, t in enumerate(dict.fromkeys(texts))}


def test_texts_without_a_word_are_refused_as_scikit_learn_refuses_them():
    with pytest.raises(ValueError, match="empty vocabulary"):
        tfidf.NgramCounts(["?!", "a", ""])
