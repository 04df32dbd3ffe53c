"""Routers by name: config, CLI and server name a router with one string."""

from __future__ import annotations

from herd.errors import UsageError
from herd.routers.auto import AutoRouter, EnsembleRouter
from herd.routers.base import FeatureRouter, Router
from herd.routers.cluster import ClusterRouter
from herd.routers.knn import KNNRouter
from herd.routers.learners import ForestRouter, MLPRouter, RegressionRouter
from herd.routers.logistic import LogisticRouter
from herd.routers.mf import MFRouter

# name -> (class, default parameters, description)
ROUTERS: dict[str, tuple[type[Router], dict, str]] = {
    "auto": (AutoRouter, {}, "picks the best of knn, logistic, mf, regression, cluster and their mean by inner CV on the training split"),
    "ensemble": (EnsembleRouter, {}, "the mean of the knn, logistic and mf routers' scores"),
    "knn": (KNNRouter, {"features": "embed"}, "k nearest training queries in MiniLM embedding space, shrunk to model priors"),
    "knn-tfidf": (KNNRouter, {"features": "tfidf"}, "k nearest training queries by TF-IDF cosine, shrunk to model priors"),
    "logistic": (LogisticRouter, {}, "TF-IDF + one logistic classifier per model (SelectLLM's separate classifiers)"),
    "logistic-task": (LogisticRouter, {"features": "tfidf+task"}, "logistic over TF-IDF and the query's task where known"),
    "knn-task": (KNNRouter, {"features": "embed+task"}, "knn over MiniLM embeddings, neighbours of the same task first"),
    "mf": (MFRouter, {"features": "embed"}, "matrix factorization: learned model embeddings x projected query embeddings (RouteLLM MF)"),
    "mf-tfidf": (MFRouter, {"features": "tfidf-svd"}, "matrix factorization over TF-IDF reduced by SVD"),
    "regression": (RegressionRouter, {"features": "embed"}, "ridge regression of each model's score (the Herd paper)"),
    "cluster": (ClusterRouter, {"features": "embed"}, "k-means over embeddings, each model's accuracy per cluster (SelectLLM)"),
    "cluster-tfidf": (ClusterRouter, {"features": "tfidf-svd"}, "k-means over TF-IDF (SVD), per-cluster accuracy (SelectLLM)"),
    "rf": (ForestRouter, {"features": "embed"}, "random forest over embeddings, all models at once (SelectLLM)"),
    "mlp": (MLPRouter, {"features": "embed"}, "multi-label MLP over embeddings (SelectLLM MLC, RouterBench MLP)"),
}
DESCRIPTIONS = {name: text for name, (_, _, text) in ROUTERS.items()}


def weighted_names() -> list[str]:
    """The routers that can fit weighted and partial outcomes (live feedback)."""
    return [name for name, (cls, _, _) in ROUTERS.items() if cls.takes_weights]


def make_router(name: str, **params) -> Router:
    """An unfitted router by registry name ('knn', 'logistic', 'auto', ...; see ``DESCRIPTIONS``),
    with ``params`` overriding its defaults. ``.fit(outcomes)``, then ``.predict_scores(texts)``
    gives (n_queries, n_models) P(correct)."""
    try:
        cls, defaults, _ = ROUTERS[name]
    except KeyError:
        raise UsageError(f"unknown router {name!r}; choose from {sorted(ROUTERS)}") from None
    return cls(**{**defaults, **params})


__all__ = ["ROUTERS", "DESCRIPTIONS", "weighted_names", "AutoRouter", "EnsembleRouter", "ClusterRouter", "FeatureRouter", "ForestRouter", "KNNRouter",
           "LogisticRouter", "MFRouter", "MLPRouter", "RegressionRouter", "Router", "make_router"]
