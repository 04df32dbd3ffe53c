"""The router contract: estimate P(correct | query, model) for every model in the pool."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, clone

from herd.data import Matrix, Outcomes
from herd.errors import UsageError
from herd.features import Featurizer, Queries


class Router(BaseEstimator):
    """scikit-learn style: hyper-parameters in ``__init__``, ``fit`` returns self, state ends in ``_``.

    After ``fit``: ``models_`` (pool model names, column order of the scores) and ``prior_``
    (each model's training accuracy, the estimate when a query tells us nothing).

    Families whose learner weighs its samples declare ``takes_weights = True`` and accept
    ``fit(data, sample_weight=W)``; the others refuse it. Routers whose fit runs an inner
    cross-validation of their own keep its held-out scores of the training queries in
    ``validation_scores_`` and declare ``keeps_validation_scores = True``.
    """

    takes_weights = False
    keeps_validation_scores = False

    def fit(self, data: Matrix | Outcomes, sample_weight: np.ndarray | None = None) -> Router:
        """Learn each model's P(correct) from recorded outcomes; every model of ``data`` becomes
        a column of the scores (``models_``). Returns self.

        ``sample_weight`` (n_queries, n_models), 0 or more: how much each outcome counts; a zero
        leaves it out, which is how partial labels are fitted (live feedback observes one model
        per query; unobserved cells must weigh 0). Without it every cell counts once and a
        missing outcome counts as wrong (the model gave no answer)."""
        m = data.matrix() if isinstance(data, Outcomes) else data
        if m.n_queries == 0 or not m.models:
            raise UsageError("cannot fit a router on no queries or no models")
        self.models_ = list(m.models)
        y = m.labels
        if sample_weight is None:
            self.prior_ = y.mean(axis=0)
            self._fit(Queries(m.texts, m.tasks), y)
            return self
        self._check_takes_weights()
        w = check_weights(sample_weight, m)
        self.prior_ = (w * y).sum(axis=0) / w.sum(axis=0)
        self._fit(Queries(m.texts, m.tasks), y, w)
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

    def score_one(self, text: str, task: str | None = None) -> np.ndarray:
        """(n_models,) P(correct) of one query, as ``predict_scores`` gives it; routers with a
        quicker way for one live query override it."""
        return self.predict_scores([text], [task])[0]

    def _check_takes_weights(self) -> None:
        if not self.takes_weights:
            from herd.routers import weighted_names

            raise UsageError(f"{type(self).__name__} cannot weigh its training outcomes (live feedback needs it); "
                             f"use one of: {', '.join(weighted_names())}")

    def prepare(self, texts: list[str], progress=None) -> None:
        """Compute and cache expensive features for texts ahead of fitting (optional)."""

    def embedding_engine(self) -> str | None:
        """The sentence encoder engine the fitted router reads, or None if it reads no embeddings."""
        return None

    def _fit(self, texts: list[str], y: np.ndarray, w: np.ndarray | None = None) -> None:
        """``w``: (n_queries, n_models) weights, only where ``takes_weights``; None = all 1."""
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


def check_weights(sample_weight, m: Matrix) -> np.ndarray:
    """(n_queries, n_models) finite weights of 0 or more, none on a missing outcome, some for
    every model; float64."""
    w = np.asarray(sample_weight, dtype=float)
    if w.shape != m.correct.shape:
        raise ValueError(f"sample_weight has shape {w.shape}; it needs one weight per query and model, {m.correct.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("sample_weight must be finite and 0 or more")
    if (w[np.isnan(m.correct)] > 0).any():
        raise ValueError("sample_weight gives weight to outcomes that are missing; weigh them 0")
    empty = [name for name, total in zip(m.models, w.sum(axis=0)) if total <= 0]
    if empty:
        raise ValueError(f"no weighted outcome for model(s) {empty}; leave them out of the pool")
    return w


INNER_FOLDS = 3


def out_of_fold_scores(proto: Router, train: Matrix, seed: int, folds: int = INNER_FOLDS,
                       sample_weight: np.ndarray | None = None) -> np.ndarray:
    """Scores for every training query from a copy of ``proto`` fitted on the other inner folds
    (with their ``sample_weight`` rows, when given): how a router does on queries it has not
    seen, for choosing a router (``auto``) or tuning a policy (``herd.tuning``)."""
    out = np.empty(train.correct.shape)
    for tr, va in train.kfold(min(folds, train.n_queries), seed):
        held = train.take(va)
        w = None if sample_weight is None else sample_weight[tr]
        out[va] = clone(proto).fit(train.take(tr), sample_weight=w).predict_scores(held.texts, held.tasks)
    return out
