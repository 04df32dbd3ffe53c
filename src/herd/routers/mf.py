"""Matrix factorization router (RouteLLM's MF, EmbedLLM): learned model embeddings share strength
across models, so a 50-model pool costs little more than a 5-model one."""

from __future__ import annotations

import numpy as np

from herd.routers.base import FeatureRouter

HOLDOUT = 0.1
CHECK_EVERY = 10


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


class MFRouter(FeatureRouter):
    """logit P(correct | q, m) = <v_m, W x_q> + b_m, fitted by Adam on the cross-entropy of all
    (query, model) cells (fractional scores are soft labels) with L2 on W and V.

    The number of epochs is chosen on a held-out 10% of the training queries (the epoch with the
    lowest held-out loss, up to ``max_epochs``); the router is then refitted on all of them.
    """

    def __init__(self, dim: int = 32, l2: float = 1e-4, lr: float = 0.01, max_epochs: int = 400,
                 features: str = "embed", seed: int = 0):
        self.dim = dim
        self.l2 = l2
        self.lr = lr
        self.max_epochs = max_epochs
        self.features = features
        self.seed = seed

    def _train(self, x, y, epochs, x_val=None, y_val=None):
        rng = np.random.default_rng(self.seed)
        n, d = x.shape
        m = y.shape[1]
        w = rng.normal(0, 1 / np.sqrt(d), (d, self.dim)).astype(np.float32)
        v = rng.normal(0, 0.1, (m, self.dim)).astype(np.float32)
        p = np.clip(y.mean(axis=0), 1e-3, 1 - 1e-3)
        b = np.log(p / (1 - p)).astype(np.float32)
        params = [w, v, b]
        moments = [(np.zeros_like(t), np.zeros_like(t)) for t in params]
        best = (np.inf, 0)
        for t in range(1, epochs + 1):
            h = x @ w
            g = ((_sigmoid(h @ v.T + b) - y) / (n * m)).astype(np.float32)  # dLoss/dlogit, mean cross-entropy
            grads = [x.T @ (g @ v) + 2 * self.l2 * w, g.T @ h + 2 * self.l2 * v, g.sum(axis=0)]
            for param, grad, (m1, m2) in zip(params, grads, moments):
                m1 *= 0.9
                m1 += 0.1 * grad
                m2 *= 0.999
                m2 += 0.001 * grad**2
                param -= self.lr * (m1 / (1 - 0.9**t)) / (np.sqrt(m2 / (1 - 0.999**t)) + 1e-8)
            if x_val is not None and t % CHECK_EVERY == 0:
                q = np.clip(_sigmoid(x_val @ w @ v.T + b), 1e-6, 1 - 1e-6)
                loss = -np.mean(y_val * np.log(q) + (1 - y_val) * np.log(1 - q))
                if loss < best[0]:
                    best = (loss, t)
        return w, v, b, best[1]

    def _fit(self, texts, y):
        x = np.asarray(self._featurize(texts, fit=True), dtype=np.float32)
        y = y.astype(np.float32)
        n = len(texts)
        epochs = self.max_epochs
        if n >= 50:
            order = np.random.default_rng(self.seed).permutation(n)
            cut = max(1, int(HOLDOUT * n))
            val, tr = order[:cut], order[cut:]
            *_, best_epoch = self._train(x[tr], y[tr], self.max_epochs, x[val], y[val])
            epochs = max(CHECK_EVERY, best_epoch)
        self.epochs_ = epochs
        self.w_, self.v_, self.b_, _ = self._train(x, y, epochs)

    def _predict(self, texts):
        x = np.asarray(self.featurizer_.transform(texts), dtype=np.float32)
        return _sigmoid((x @ self.w_ @ self.v_.T + self.b_).astype(np.float64))
