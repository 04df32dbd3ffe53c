"""`auto`: pick the router that routes best by cross-validation inside the training split."""

from __future__ import annotations

import numpy as np

from herd.errors import UsageError
from herd.features import EmbeddingsUnavailable
from herd.routers.base import Router, out_of_fold_scores

DEFAULT_CANDIDATES = ("knn", "logistic", "mf", "regression", "cluster")
ENSEMBLE = "ensemble"


class EnsembleRouter(Router):
    """The mean of its member routers' scores: averaging estimators of different kinds
    smooths each one's errors."""

    def __init__(self, members: tuple[str, ...] = ("knn", "logistic", "mf"), seed: int = 0):
        self.members = members
        self.seed = seed

    def prepare(self, texts, progress=None):
        from herd.routers import make_router

        for name in self.members:
            make_router(name, seed=self.seed).prepare(texts, progress=progress)

    def fit(self, data, sample_weight=None) -> EnsembleRouter:
        if sample_weight is not None:
            self._check_takes_weights()
        from herd.routers import make_router

        m = data.matrix() if hasattr(data, "matrix") else data
        self.routers_ = [make_router(name, seed=self.seed).fit(m) for name in self.members]
        self.models_ = self.routers_[0].models_
        self.prior_ = self.routers_[0].prior_
        return self

    def _predict(self, texts):
        return np.mean([r.predict_scores(texts) for r in self.routers_], axis=0)

    def embedding_engine(self) -> str | None:
        return next((e for r in self.routers_ if (e := r.embedding_engine())), None)


class AutoRouter(Router):
    """Fits each candidate router on inner folds of the training data, keeps the one whose
    argmax choice is right most often on the held-out inner folds (ties: lower Brier score),
    and refits it on all the training data. The mean of all candidates (an ensemble) is a
    candidate too, scored on the same out-of-fold predictions at no extra cost.

    ``validation_scores_`` keeps the winner's out-of-fold scores on the training queries, so a
    policy can be tuned on them without another round of fitting. Candidates needing sentence
    embeddings are skipped when the embed extra is missing.
    """

    keeps_validation_scores = True

    def __init__(self, candidates: tuple[str, ...] = DEFAULT_CANDIDATES, seed: int = 0):
        self.candidates = candidates
        self.seed = seed

    def _protos(self, with_tasks: bool = False):
        """The candidates, and where the training queries carry tasks (a mixture's benchmarks,
        categories), each candidate's task-aware variant ('NAME-task') where there is one."""
        from herd.routers import ROUTERS, make_router

        names = [*self.candidates, *(f"{c}-task" for c in self.candidates if with_tasks and f"{c}-task" in ROUTERS)]
        return {name: make_router(name, seed=self.seed) for name in dict.fromkeys(names)}

    def prepare(self, texts, progress=None):
        for proto in self._protos().values():
            try:
                proto.prepare(texts, progress=progress)
            except EmbeddingsUnavailable:
                continue

    def fit(self, data, sample_weight=None) -> AutoRouter:
        if sample_weight is not None:
            self._check_takes_weights()
        m = data.matrix() if hasattr(data, "matrix") else data
        y = m.labels
        rows = np.arange(len(y))
        self.cv_results_ = {}
        fitted: dict[str, np.ndarray] = {}
        protos = self._protos(with_tasks=m.tasks is not None and any(t is not None for t in m.tasks))
        for name, proto in protos.items():
            try:
                fitted[name] = out_of_fold_scores(proto, m, self.seed)
            except EmbeddingsUnavailable:
                self.cv_results_[name] = {"skipped": "embed extra not installed"}
        if not fitted:
            raise UsageError(f"auto: no candidate router could be fitted ({self.cv_results_})")
        if len(fitted) > 1:
            fitted[ENSEMBLE] = np.mean(list(fitted.values()), axis=0)
        best = None
        for name, oof in fitted.items():
            acc = float(y[rows, oof.argmax(axis=1)].mean())
            brier = float(np.mean((oof - y) ** 2))
            self.cv_results_[name] = {"accuracy": acc, "brier": brier}
            if best is None or (acc, -brier) > (best[0], -best[1]):
                best = (acc, brier, name, oof)
        _, _, self.chosen_, self.validation_scores_ = best
        members = tuple(n for n in fitted if n != ENSEMBLE)
        proto = EnsembleRouter(members, self.seed) if self.chosen_ == ENSEMBLE else protos[self.chosen_]
        self.router_ = proto.fit(m)
        self.models_ = self.router_.models_
        self.prior_ = self.router_.prior_
        return self

    def _predict(self, texts):
        return self.router_.predict_scores(texts)

    def embedding_engine(self) -> str | None:
        return self.router_.embedding_engine()

    def summary(self) -> str:
        if self.chosen_ == ENSEMBLE:
            return f"chose the mean of {'+'.join(self.router_.members)}"
        return f"chose {self.chosen_}"
