"""herd: route each LLM query to the model in your pool that will answer it correctly, cheaply."""

__version__ = "0.1.0"

from herd.data import HerdDataError, Matrix, Outcomes  # noqa: E402
from herd.evaluate import evaluate  # noqa: E402
from herd.policies import ArgMax  # noqa: E402
from herd.routers import KNNRouter, LogisticRouter, make_router  # noqa: E402

__all__ = [
    "ArgMax",
    "HerdDataError",
    "KNNRouter",
    "LogisticRouter",
    "Matrix",
    "Outcomes",
    "evaluate",
    "make_router",
    "__version__",
]
