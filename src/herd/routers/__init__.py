"""Routers by name: config, CLI and server name a router with one string."""

from __future__ import annotations

from herd.routers.base import Router
from herd.routers.knn import KNNRouter
from herd.routers.logistic import LogisticRouter

ROUTERS: dict[str, tuple[type[Router], dict]] = {
    "knn": (KNNRouter, {"features": "embed"}),
    "knn-tfidf": (KNNRouter, {"features": "tfidf"}),
    "logistic": (LogisticRouter, {}),
}
DESCRIPTIONS = {
    "knn": "k nearest training queries in MiniLM sentence-embedding space, shrunk to model priors",
    "knn-tfidf": "k nearest training queries by TF-IDF cosine, shrunk to model priors",
    "logistic": "TF-IDF + one logistic classifier per model (SelectLLM's 'separate classifiers')",
}


def make_router(name: str, **params) -> Router:
    try:
        cls, defaults = ROUTERS[name]
    except KeyError:
        raise ValueError(f"unknown router {name!r}; choose from {sorted(ROUTERS)}") from None
    return cls(**{**defaults, **params})


__all__ = ["ROUTERS", "DESCRIPTIONS", "KNNRouter", "LogisticRouter", "Router", "make_router"]
