"""herd: route each LLM query to the model in your pool that will answer it correctly, cheaply."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public names and the modules that hold them, imported on first use so that `herd --help`
# and the gateway start without loading pandas or scikit-learn.
_EXPORTS = {
    "HerdDataError": "herd.data",
    "Matrix": "herd.data",
    "Outcomes": "herd.data",
    "evaluate": "herd.evaluation",
    "Evaluation": "herd.evaluation",
    "BenchmarkResult": "herd.evaluation",
    "Decision": "herd.policies",
    "ArgMax": "herd.policies",
    "CostAware": "herd.policies",
    "SafeArgMax": "herd.policies",
    "Explore": "herd.policies",
    "make_policy": "herd.policies",
    "AutoRouter": "herd.routers",
    "KNNRouter": "herd.routers",
    "LogisticRouter": "herd.routers",
    "MFRouter": "herd.routers",
    "make_router": "herd.routers",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'herd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
