"""Cluster router (SelectLLM): k-means over query features, each model's record per cluster."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from herd.routers.base import FeatureRouter

CLUSTER_GRID = (4, 8, 16, 32, 64)
PRIOR_GRID = (1.0, 4.0, 16.0)
HOLDOUT = 0.2


class ClusterRouter(FeatureRouter):
    """P(correct | q, m) = (hits of m in q's cluster + a * prior_m) / (cluster size + a).

    The number of clusters and the prior strength ``a`` default to None: chosen by Brier score
    on a held-out 20% of the training queries, then refitted on all of them. Weighted
    (``sample_weight``): hits and cluster sizes are summed weights, per model.
    """

    takes_weights = True

    def __init__(self, n_clusters: int | None = None, prior_strength: float | None = None,
                 features: str = "embed", seed: int = 0):
        self.n_clusters = n_clusters
        self.prior_strength = prior_strength
        self.features = features
        self.seed = seed

    def _table(self, x, y, w, k, a):
        with warnings.catch_warnings():  # repeated questions make fewer distinct clusters: fine
            warnings.simplefilter("ignore", ConvergenceWarning)
            km = KMeans(k, n_init=1, random_state=self.seed).fit(x)
        counts, hits = np.zeros((k, y.shape[1])), np.zeros((k, y.shape[1]))
        np.add.at(counts, km.labels_, w)
        np.add.at(hits, km.labels_, w * y)
        prior = (w * y).sum(axis=0) / np.maximum(w.sum(axis=0), 1e-12)
        total = counts + a
        return km, np.divide(hits + a * prior, total, out=np.broadcast_to(prior, total.shape).copy(), where=total > 0)

    def _fit(self, texts, y, w=None):
        x = self._featurize(texts, fit=True)
        w = np.ones_like(y) if w is None else w
        n = len(texts)
        ks = [k for k in CLUSTER_GRID if k * 10 <= n] or [max(1, n // 10)]
        ks = [self.n_clusters] if self.n_clusters else ks
        grid_a = [self.prior_strength] if self.prior_strength is not None else PRIOR_GRID
        if len(ks) * len(grid_a) > 1:
            order = np.random.default_rng(self.seed).permutation(n)
            cut = max(1, int(HOLDOUT * n))
            val, tr = order[:cut], order[cut:]
            scored = []
            for k in ks:
                km, _ = self._table(x[tr], y[tr], w[tr], k, 1.0)
                val_cluster = km.predict(x[val])
                for a in grid_a:
                    _, table = self._table(x[tr], y[tr], w[tr], k, a)
                    err = (table[val_cluster] - y[val]) ** 2
                    scored.append((float((err * w[val]).sum() / max(w[val].sum(), 1e-12)), k, a))
            _, k, a = min(scored, key=lambda t: t[0])
        else:
            k, a = ks[0], grid_a[0]
        self.n_clusters_, self.prior_strength_ = min(k, n), a
        self.kmeans_, self.table_ = self._table(x, y, w, self.n_clusters_, a)

    def _predict(self, texts):
        return self.table_[self.kmeans_.predict(self._featurize(texts))]
