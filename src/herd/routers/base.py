"""The router contract: estimate P(correct | query, model) for every model in the pool."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from herd.data import Matrix, Outcomes
from herd.features import Featurizer, Queries


class Router(BaseEstimator):
    """scikit-learn style: hyper-parameters in ``__init__``, ``fit`` returns self, state ends in ``_``.

    After ``fit``: ``models_`` (pool model names, column order of the scores) and ``prior_``
    (each model's training accuracy, the estimate when a query tells us nothing).
    """

    def fit(self, data: Matrix | Outcomes) -> Router:
        """Learn each model's P(correct) from recorded outcomes; every model of ``data`` becomes
        a column of the scores (``models_``). Returns self."""
        m = data.matrix() if isinstance(data, Outcomes) else data
        if m.n_queries == 0 or not m.models:
            raise ValueError("cannot fit a router on no queries or no models")
        self.models_ = list(m.models)
        y = m.labels
        self.prior_ = y.mean(axis=0)
        self._fit(Queries(m.texts, m.tasks), y)
        return self

    def predict_scores(self, texts: list[str], tasks: list[str | None] | None = None) -> np.ndarray:
        """(n_queries, n_models) estimated P(correct), columns in ``models_`` order. ``tasks``
        (one per query, None where unknown) is read by routers whose features include the task."""
        if not hasattr(self, "models_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit() first")
        if len(texts) == 0:
            return np.zeros((0, len(self.models_)))
        return np.clip(self._predict(Queries(texts, tasks if tasks is not None else getattr(texts, "tasks", None))),
                       0.0, 1.0)

    def prepare(self, texts: list[str], progress=None) -> None:
        """Compute and cache expensive features for texts ahead of fitting (optional)."""

    def embedding_engine(self) -> str | None:
        """The sentence encoder engine the fitted router reads, or None if it reads no embeddings."""
        return None

    def _fit(self, texts: list[str], y: np.ndarray) -> None:
        raise NotImplementedError

    def _predict(self, texts: list[str]) -> np.ndarray:
        raise NotImplementedError


class FeatureRouter(Router):
    """A router over one featurizer; subclasses set ``features`` and ``seed`` in ``__init__``."""

    def prepare(self, texts, progress=None):
        Featurizer(self.features, self.seed).prepare(texts, progress=progress)

    def embedding_engine(self) -> str | None:
        return self.featurizer_.engine_

    def _featurize(self, texts, fit: bool = False):
        if fit:
            self.featurizer_ = Featurizer(self.features, self.seed).fit(texts)
        return self.featurizer_.transform(texts)
