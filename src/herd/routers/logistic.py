"""One logistic classifier per model over TF-IDF features (SelectLLM's 'separate classifiers')."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression

from herd.routers.base import FeatureRouter


FIT_THREADS = max(1, min(4, os.cpu_count() or 1))

# Stopping tolerance of liblinear's dual solver (its largest dual violation). liblinear's own
# default for this solver is 0.1 and scikit-learn's 1e-4; at 3e-3 the held-out P(correct) stays
# within about 1e-4 of the exact optimum (primal Newton at scikit-learn's default was 3e-4 off)
# and a fit takes about a quarter less time.
DUAL_TOL = 3e-3


class LogisticRouter(FeatureRouter):
    """P(correct | query, model j) from an L2-regularized logistic regression per model.

    Fractional outcomes (scores in [0, 1]) are fitted exactly: each query enters twice, as a
    positive with weight y and a negative with weight 1 - y. A model that is always right (or
    always wrong) in training gets its training rate. Weighted fits (``sample_weight``) scale
    both rows of a query by its weight; a model is fitted on the queries that weigh on it.
    """

    takes_weights = True

    def __init__(self, C: float = 1.0, max_iter: int = 200, features: str = "tfidf", seed: int = 0):
        self.C = C
        self.max_iter = max_iter
        self.features = features
        self.seed = seed

    def _fit(self, texts, y, w=None):
        x = self._featurize(texts, fit=True)
        w = np.ones_like(y) if w is None else w
        if self.featurizer_.uses_task and self.featurizer_.tasks_:
            # Each query once more without its task, so one whose task is unknown is routed by its text.
            x = sp.vstack([x, self.featurizer_.without_task(x)]).tocsr() if sp.issparse(x) else np.vstack(
                [x, self.featurizer_.without_task(x)])
            y, w = np.vstack([y, y]), np.vstack([w, w])
        xx = sp.vstack([x, x]).tocsr() if sp.issparse(x) else np.vstack([x, x])
        labels = np.r_[np.ones(x.shape[0]), np.zeros(x.shape[0])]
        # All models' weights in one matrix, so routing is one sparse product, not one call per model.
        self.coef_ = np.zeros((x.shape[1], y.shape[1]))
        self.intercept_ = np.zeros(y.shape[1])

        def fit_one(j: int) -> None:
            yj, wj = y[:, j], w[:, j]
            seen = yj[wj > 0]
            if seen.min() == seen.max():  # no signal: a constant at the training rate
                p = np.clip(seen[0], 1e-6, 1 - 1e-6)
                self.intercept_[j] = np.log(p / (1 - p))
                return
            weights = np.r_[wj * yj, wj * (1.0 - yj)]
            keep = weights > 0
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter, solver="liblinear", dual=dual,
                                     tol=DUAL_TOL if dual else 1e-4, random_state=self.seed)
            clf.fit(xx[keep], labels[keep], sample_weight=weights[keep])
            self.coef_[:, j] = clf.coef_[0]
            self.intercept_[j] = clf.intercept_[0]

        # The same optimum either way; liblinear's dual coordinate descent reaches it several times
        # faster when there are fewer rows than features (text), its primal Newton method when not.
        dual = x.shape[0] < x.shape[1]
        # liblinear releases the GIL, so the primal fits share the cores, each writing its own
        # column. The dual visits rows in an order drawn from C's one process-wide random state:
        # fits running side by side would draw from it in turn and differ from run to run.
        threads = 1 if dual else min(FIT_THREADS, y.shape[1])
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(fit_one, range(y.shape[1])))

    def _predict(self, texts):
        z = np.asarray(self._featurize(texts) @ self.coef_) + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))

    def score_one(self, text, task=None):
        if getattr(self, "featurizer_", None) is None or self.featurizer_.kind != "tfidf":
            return super().score_one(text, task)
        # A live query's few terms pick their rows of the weights: no sparse matrix to build.
        columns, values = self.featurizer_.tfidf_.row(text)
        z = values @ self.coef_[columns] + self.intercept_
        return 1.0 / (1.0 + np.exp(-z))
