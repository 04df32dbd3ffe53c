"""`auto`: pick the router that routes best by cross-validation inside the training split."""

from __future__ import annotations

import numpy as np
from sklearn.base import clone

from herd.data import Matrix
from herd.features import EmbeddingsUnavailable
from herd.routers.base import Router

DEFAULT_CANDIDATES = ("knn", "logistic", "mf", "regression", "cluster")
INNER_FOLDS = 3


def out_of_fold_scores(proto: Router, train: Matrix, seed: int, folds: int = INNER_FOLDS) -> np.ndarray:
    """Scores for every training query from a copy of ``proto`` fitted on the other inner folds."""
    out = np.empty(train.correct.shape)
    for tr, va in train.kfold(min(folds, train.n_queries), seed):
        out[va] = clone(proto).fit(train.take(tr)).predict_scores([train.texts[i] for i in va])
    return out


class AutoRouter(Router):
    """Fits each candidate router on inner folds of the training data, keeps the one whose
    argmax choice is right most often on the held-out inner folds (ties: lower Brier score),
    and refits it on all the training data.

    ``validation_scores_`` keeps the winner's out-of-fold scores on the training queries, so a
    policy can be tuned on them without another round of fitting. Candidates needing sentence
    embeddings are skipped when the embed extra is missing.
    """

    def __init__(self, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, seed: int = 0):
        self.candidates = candidates
        self.seed = seed

    def _protos(self):
        from herd.routers import make_router

        return {name: make_router(name) for name in self.candidates}

    def prepare(self, texts, progress=None):
        for proto in self._protos().values():
            try:
                proto.prepare(texts, progress=progress)
            except EmbeddingsUnavailable:
                continue

    def fit(self, data) -> AutoRouter:
        m = data.matrix() if hasattr(data, "matrix") else data
        y = m.labels
        rows = np.arange(len(y))
        self.cv_results_ = {}
        best = None
        for name, proto in self._protos().items():
            try:
                oof = out_of_fold_scores(proto, m, self.seed)
            except EmbeddingsUnavailable:
                self.cv_results_[name] = {"skipped": "embed extra not installed"}
                continue
            acc = float(y[rows, oof.argmax(axis=1)].mean())
            brier = float(np.mean((oof - y) ** 2))
            self.cv_results_[name] = {"accuracy": acc, "brier": brier}
            if best is None or (acc, -brier) > (best[0], -best[1]):
                best = (acc, brier, name, oof)
        if best is None:
            raise ValueError(f"auto: no candidate router could be fitted ({self.cv_results_})")
        _, _, self.chosen_, self.validation_scores_ = best
        self.router_ = self._protos()[self.chosen_].fit(m)
        self.models_ = self.router_.models_
        self.prior_ = self.router_.prior_
        return self

    def _predict(self, texts):
        return self.router_.predict_scores(texts)

    def summary(self) -> str:
        return f"chose {self.chosen_}"
