"""kNN router: a model's chance on a query is its record on the k most similar training queries."""

from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

from herd.routers.base import FeatureRouter

K_GRID = (5, 10, 20, 40, 80)
PRIOR_GRID = (0.0, 2.0, 8.0, 32.0)
MAX_TUNING_QUERIES = 3000
CHUNK = 1024
FEW_QUERIES = 8  # live routing: the similarity product runs on one BLAS thread


# threadpoolctl's limit is process-wide and restores what it found on entry: one thread at a
# time may hold it, or overlapping requests would leave BLAS at one thread for good.
_ONE_BLAS_THREAD = threading.Lock()


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


@contextmanager
def _one_blas_thread():
    with _ONE_BLAS_THREAD, _blas().limit(limits=1, user_api="blas"):
        yield


class KNNRouter(FeatureRouter):
    """P(correct) = (sum of the k neighbours' outcomes + a * prior) / (k + a).

    ``k`` and the prior strength ``a`` default to None: chosen on the training data alone by
    leave-one-out Brier score (each training query scored from its other neighbours), so no
    test query ever informs them. ``features``: see ``herd.features.Featurizer``.

    Weighted (``sample_weight``): each neighbour's outcome counts by its weight, over the
    neighbours' summed weight for that model, so a model counts only the neighbours that
    observed it (live feedback observes one model per query).
    """

    takes_weights = True

    def __init__(self, k: int | None = None, prior_strength: float | None = None, features: str = "embed", seed: int = 0):
        self.k = k
        self.prior_strength = prior_strength
        self.features = features
        self.seed = seed

    def _neighbours(self, xq, kmax: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Indices of the kmax most similar training queries, most similar first."""
        out = np.empty((xq.shape[0], kmax), dtype=np.int64)
        if kmax == 0:
            return out
        # A few queries' product is small: extra BLAS threads gain nothing there and, left
        # spinning, slow the sentence encoder's threads on the next query (~4 ms a query).
        few = xq.shape[0] <= FEW_QUERIES and not hasattr(xq, "tocsr")
        for s in range(0, xq.shape[0], CHUNK):
            with _one_blas_thread() if few else nullcontext():
                sim = xq[s : s + CHUNK] @ self.xt_
            sim = sim.toarray() if hasattr(sim, "toarray") else np.asarray(sim)
            if exclude is not None:
                sim[np.arange(sim.shape[0]), exclude[s : s + CHUNK]] = -np.inf
            # The kmax largest, partitioned from the top end: no negated copy of the block, and
            # numpy's selection is 2-3 times faster there on similarity rows.
            part = np.argpartition(sim, -kmax, axis=1)[:, -kmax:]
            order = np.argsort(-np.take_along_axis(sim, part, axis=1), axis=1, kind="stable")
            out[s : s + CHUNK] = np.take_along_axis(part, order, axis=1)
        return out

    def _hits(self, nbrs: np.ndarray, k: int) -> np.ndarray:
        """(n_queries, n_models): the outcomes summed over each query's k nearest neighbours
        (weighted: (hits, summed weights) stacked on a first axis of 2)."""
        if getattr(self, "w_", None) is None:  # routers saved before weights had no w_
            return self.y_[nbrs[:, :k]].sum(axis=1)
        near = nbrs[:, :k]
        return np.stack([(self.y_[near] * self.w_[near]).sum(axis=1), self.w_[near].sum(axis=1)])

    def _estimate(self, hits: np.ndarray, k: int, a: float) -> np.ndarray:
        if getattr(self, "w_", None) is None:  # routers saved before weights had no w_
            return (hits + a * self.prior_) / (k + a)
        total = hits[1] + a
        # No neighbour weighs on a model and no prior strength: the prior.
        return np.divide(hits[0] + a * self.prior_, total, out=np.broadcast_to(self.prior_, total.shape).copy(),
                         where=total > 0)

    def _fit(self, texts, y, w=None):
        x = self._featurize(texts, fit=True)
        # Kept transposed in the layout a query's product reads: sparse TF-IDF would otherwise
        # convert the whole training matrix on every call (most of a single query's time).
        self.xt_ = x.T.tocsr() if hasattr(x, "tocsr") else np.ascontiguousarray(x.T)
        self.y_ = y.astype(np.float32)
        self.w_ = None if w is None else w.astype(np.float32)
        n = len(texts)
        ks = [k for k in K_GRID if k < n] or [max(1, n - 1)]
        if self.k is not None and self.prior_strength is not None:
            self.k_, self.prior_strength_ = min(self.k, n), float(self.prior_strength)
            return
        rng = np.random.default_rng(self.seed)
        rows = np.sort(rng.choice(n, size=min(n, MAX_TUNING_QUERIES), replace=False))
        kgrid = [min(self.k, n - 1)] if self.k is not None else ks
        agrid = [float(self.prior_strength)] if self.prior_strength is not None else PRIOR_GRID
        nbrs = self._neighbours(x[rows], max(kgrid), exclude=rows)
        truth = self.y_[rows]
        weigh = None if self.w_ is None else self.w_[rows]  # the Brier score over observed outcomes
        scored = []
        for k in kgrid:
            hits = self._hits(nbrs, k)  # once per k: the prior strengths only reweigh it
            scored += [(float(np.average((self._estimate(hits, k, a) - truth) ** 2, weights=weigh)), k, a)
                       for a in agrid]
        _, self.k_, self.prior_strength_ = min(scored, key=lambda t: t[0])

    def _predict(self, texts):
        nbrs = self._neighbours(self._featurize(texts), self.k_)
        return self._estimate(self._hits(nbrs, self.k_), self.k_, self.prior_strength_)
