"""One logistic classifier per model over TF-IDF features (SelectLLM's 'separate classifiers')."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from herd.features import tfidf_vectorizer
from herd.routers.base import Router


class LogisticRouter(Router):
    """P(correct | query, model j) from an L2-regularized logistic regression per model.

    Fractional outcomes (scores in [0, 1]) are fitted exactly: each query enters twice, as a
    positive with weight y and a negative with weight 1 - y. A model that is always right (or
    always wrong) in training gets its training rate.
    """

    def __init__(self, C: float = 1.0, max_iter: int = 200, seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def _fit(self, texts, y):
        self.vectorizer_ = tfidf_vectorizer().fit(texts)
        x = self.vectorizer_.transform(texts)
        xx = sp.vstack([x, x]).tocsr()
        labels = np.r_[np.ones(len(texts)), np.zeros(len(texts))]
        self.classifiers_ = []
        for j in range(y.shape[1]):
            yj = y[:, j]
            if yj.min() == yj.max():
                self.classifiers_.append(None)
                continue
            weights = np.r_[yj, 1.0 - yj]
            keep = weights > 0
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="liblinear", random_state=self.seed)
            clf.fit(xx[keep], labels[keep], sample_weight=weights[keep])
            self.classifiers_.append(clf)

    def _predict(self, texts):
        x = self.vectorizer_.transform(texts)
        out = np.empty((len(texts), len(self.models_)))
        for j, clf in enumerate(self.classifiers_):
            out[:, j] = self.prior_[j] if clf is None else clf.predict_proba(x)[:, 1]
        return out
