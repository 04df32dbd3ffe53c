"""Routers built on standard scikit-learn learners over query features."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.ensemble import RandomForestRegressor
from sklearn.linear_model import RidgeCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from herd.routers.base import FeatureRouter


class ForestRouter(FeatureRouter):
    """A random forest (SelectLLM) regressing every model's score at once; leaf means are P(correct)."""

    def __init__(self, n_estimators: int = 100, min_samples_leaf: int = 5, features: str = "embed", seed: int = 0):
        self.n_estimators = n_estimators
        self.min_samples_leaf = min_samples_leaf
        self.features = features
        self.seed = seed

    def _fit(self, texts, y):
        x = self._featurize(texts, fit=True)
        self.forest_ = RandomForestRegressor(
            n_estimators=self.n_estimators, min_samples_leaf=self.min_samples_leaf, max_features="sqrt",
            random_state=self.seed, n_jobs=1,
        ).fit(x, y)

    def _predict(self, texts):
        return self.forest_.predict(self._featurize(texts)).reshape(len(texts), -1)


class MLPRouter(FeatureRouter):
    """A multi-label MLP (SelectLLM's MLC, RouterBench's MLP): one sigmoid output per model,
    L2-regularized, a fixed number of epochs. Fractional scores are rounded to 0/1.

    (scikit-learn's early stopping scores multi-label fits by exact match of all labels, which
    is near zero for large pools and stops training almost at once, so it is not used.)"""

    def __init__(self, hidden: int = 128, alpha: float = 1e-2, max_iter: int = 100, features: str = "embed", seed: int = 0):
        self.hidden = hidden
        self.alpha = alpha
        self.max_iter = max_iter
        self.features = features
        self.seed = seed

    def _fit(self, texts, y):
        x = self._featurize(texts, fit=True)
        labels = (y >= 0.5).astype(int)
        self.varies_ = labels.min(axis=0) != labels.max(axis=0)
        self.mlp_ = None
        if self.varies_.any():
            with warnings.catch_warnings():  # the epoch budget is a choice, not a failure
                warnings.simplefilter("ignore", ConvergenceWarning)
                self.mlp_ = MLPClassifier(
                    hidden_layer_sizes=(self.hidden,), alpha=self.alpha, max_iter=self.max_iter, random_state=self.seed,
                ).fit(x, labels[:, self.varies_] if self.varies_.sum() > 1 else labels[:, self.varies_].ravel())

    def _predict(self, texts):
        out = np.tile(self.prior_, (len(texts), 1))
        if self.mlp_ is not None:
            p = self.mlp_.predict_proba(self._featurize(texts))
            out[:, self.varies_] = p if self.varies_.sum() > 1 else p[:, 1:]
        return out


class RegressionRouter(FeatureRouter):
    """The Herd paper's way: regress each model's score on the query, pick the highest.
    Ridge, with each model's penalty chosen by efficient leave-one-out on the training queries."""

    ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)

    def __init__(self, features: str = "embed", seed: int = 0):
        self.features = features
        self.seed = seed

    def _fit(self, texts, y):
        x = self._featurize(texts, fit=True)
        self.ridge_ = RidgeCV(alphas=self.ALPHAS, alpha_per_target=True).fit(x, y)

    def _predict(self, texts):
        return self.ridge_.predict(self._featurize(texts)).reshape(len(texts), -1)
