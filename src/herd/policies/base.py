"""The policy contract: ``Policy``, the ``Decision`` it returns, and helpers the policies share.

A policy turns a router's scores (and model prices) into a choice and a reason; it never sees
text. What a policy reads and whether it is tuned are declared on its class, so evaluation,
training and the gateway ask the policy instead of probing it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from herd.errors import HerdError


class PolicyError(HerdError, ValueError):
    """A policy spec or setting that cannot be used, or data the policy cannot be tuned or run on;
    the message names the policy and the fix."""


@dataclass(frozen=True)
class Decision:
    """A policy's decision on n queries: ``choice`` (n,) model indices into ``models``,
    ``reasons[i]`` says why query i went where it did; ``names`` are the chosen models' names."""

    choice: np.ndarray
    reasons: list[str]
    models: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """(n,) the chosen model's name per query."""
        return [self.models[i] for i in self.choice]

    def __repr__(self) -> str:
        shown = ", ".join(self.names[:3]) + (", ..." if len(self.choice) > 3 else "")
        return f"Decision({len(self.choice)} queries: {shown})"


class Policy:
    """The base of every policy, on scikit-learn's contract: the constructor only stores its
    parameters (each under its own name), ``fit`` learns what ends in ``_``, ``repr`` shows the
    parameters.

    Shapes: ``scores`` is (n_queries, n_models) P(correct) from a router, ``-inf`` where a model
    is not allowed; ``model_costs`` (n_models,) mean USD per query (NaN unknown); ``labels``
    (n_queries, n_models) correctness in [0, 1]. Policies that read more than scores declare it
    and take it as keywords (``inputs`` names them).
    """

    name = "policy"
    # Declared capabilities: callers read these instead of probing for methods.
    needs_fit = False  # tuned with ``fit`` on held-out scores of training queries before it chooses
    uses_scores = True  # reads a router's scores (False: the answers decide, no router is fitted)
    post_call = False  # reads each answer before accepting it (``observed``): calls several models in turn
    reads_answers = False  # compares the recorded answers of several models (``answers``, ``owned`` to fit)
    reads_tasks = False  # reads each query's task (``tasks``)

    def get_params(self) -> dict:
        """The constructor's parameters by name, as stored."""
        return {k: getattr(self, k) for k in inspect.signature(type(self)).parameters}

    def __repr__(self) -> str:
        """``Class(first=..., other=...)``: the first parameter always, the others where they
        differ from their defaults; no object addresses, so manifests and reports are stable."""
        shown = []
        for i, (k, param) in enumerate(inspect.signature(type(self)).parameters.items()):
            value = getattr(self, k)
            if i == 0 or param.default is inspect.Parameter.empty or not _same(value, param.default):
                shown.append(f"{k}={_plain(value)!r}")
        return f"{type(self).__name__}({', '.join(shown)})"

    @property
    def label(self) -> str:
        """The policy as a spec string (``make_policy(label)`` makes it again)."""
        return self.name

    @property
    def picks_from_scores(self) -> bool:
        """Whether it picks one model per query from the router's scores alone (what exploration wraps)."""
        return self.uses_scores and not self.post_call

    def fit(self, scores: np.ndarray | None, labels: np.ndarray, model_costs: np.ndarray | None = None,
            models: list[str] | None = None, **inputs) -> Policy:
        """Tune on held-out ``scores`` of training queries and their ``labels``; ``models``
        names the columns. Nothing to tune by default: returns self."""
        return self

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None, **inputs) -> np.ndarray:
        """(n_queries,) column indices of the chosen models."""
        raise NotImplementedError

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None,
               **inputs) -> Decision:
        """The choice with a reason per query; ``models`` names the columns."""
        raise NotImplementedError

    def called(self, choice: np.ndarray, n_models: int) -> np.ndarray | None:
        """(n_queries, n_models) bool: every model called (and paid for) to reach each choice;
        None when only the chosen model is called."""
        return None

    def anchor(self, task: str | None = None) -> int | None:
        """The column this policy stays with for a query of ``task`` unless the scores argue
        otherwise, if it has one (the gateway falls back when it cannot take a request)."""
        return None

    def summary(self) -> str | None:
        """What fitting chose, for reports; None when there is nothing to say."""
        return None


def _same(value, default) -> bool:
    try:
        return bool(value == default)
    except (TypeError, ValueError):  # arrays and the like: shown
        return False


def _plain(value):
    """NumPy scalars as Python numbers, so a repr reads 0.2, not np.float64(0.2)."""
    return value.item() if isinstance(value, np.generic) else value


def _known_costs(model_costs: np.ndarray | None, n_models: int) -> np.ndarray:
    """Mean cost per query for each model; an unknown cost counts as the dearest known one."""
    if model_costs is None:
        return np.zeros(n_models)
    c = np.array(model_costs, float)
    unknown = np.isnan(c)
    if unknown.all():
        return np.zeros(n_models)
    if unknown.any():  # rare, so checked before any work: the gateway asks this for every routed request
        c[unknown] = c[~unknown].max()
    return c


def _probability(what: str, value) -> float:
    """A threshold on P(correct): a number in [0, 1]."""
    value = float(value)
    if not 0 <= value <= 1:
        raise PolicyError(f"{what} is a probability, between 0 and 1; got {value:g}")
    return value


def _argmax_cheapest(values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Row-wise argmax; among (near-)ties, the cheaper model."""
    top = values >= values.max(axis=1, keepdims=True) - 1e-12
    return np.argmin(np.where(top, costs[None, :], np.inf), axis=1)


def _task_strings(tasks) -> np.ndarray:
    """Tasks as strings (None where unknown), as requests and ``Queries`` carry them."""
    return np.array([None if t is None or t != t else str(t) for t in tasks], dtype=object)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-3, 1 - 1e-3)
    return np.log(p / (1 - p))


def policy_inputs(policy: Policy, observed=None, answers=None, owned=None, tasks=None, *, fit: bool = False) -> dict:
    """The keywords ``policy`` reads beyond scores, from what the caller has, as its class
    declares: answer observations for a checked cascade, answer codes (and, to fit, which
    models are open) for an agreement cascade, the queries' tasks for per-task anchors."""
    if policy.post_call:
        return {"observed": observed}
    if policy.reads_answers:
        return {"answers": answers, "owned": owned} if fit else {"answers": answers}
    if policy.reads_tasks:
        return {"tasks": tasks}
    return {}


def _argmax_reason(scores: np.ndarray, chosen: int, models: list[str]) -> str:
    if len(models) == 1:
        return f"only model: {models[chosen]}"
    rest = [i for i in range(len(models)) if i != chosen]
    runner = rest[int(np.argmax(scores[rest]))]
    return (
        f"highest predicted P(correct): {models[chosen]} {scores[chosen]:.2f} "
        f"(next {models[runner]} {scores[runner]:.2f})"
    )
