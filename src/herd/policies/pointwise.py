"""Pointwise policies: each query's choice from its own scores (and prices), nothing to tune."""

from __future__ import annotations

import numpy as np

from herd.policies.base import Decision, Policy, PolicyError, _argmax_cheapest, _argmax_reason, _known_costs, _probability


class ArgMax(Policy):
    """Pick the model most likely to be right; ties go to the cheaper model."""

    name = "argmax"

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        """(n_queries,) model indices from (n_queries, n_models) scores and (n_models,) mean costs."""
        return _argmax_cheapest(scores, _known_costs(model_costs, scores.shape[1]))

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        """The choice for (n_queries, n_models) ``scores`` with a reason per query; ``models``
        names the columns."""
        choice = self.choose(scores, model_costs)
        return Decision(choice, [_argmax_reason(s, c, models) for s, c in zip(scores, choice)], models)


class CostAware(Policy):
    """Maximize P(correct) - cost_weight * cost / (dearest model's cost): one knob from quality to thrift."""

    name = "cost-aware"

    def __init__(self, cost_weight: float = 0.0):
        if cost_weight < 0:
            raise PolicyError(f"cost-aware: the cost weight must be 0 or more; got {cost_weight:g}")
        self.cost_weight = cost_weight

    def utilities(self, scores: np.ndarray, model_costs: np.ndarray | None) -> np.ndarray:
        costs = _known_costs(model_costs, scores.shape[1])
        scale = costs.max() if costs.max() > 0 else 1.0
        return scores - self.cost_weight * costs[None, :] / scale

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        costs = _known_costs(model_costs, scores.shape[1])
        return _argmax_cheapest(self.utilities(scores, model_costs), costs)

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        costs = _known_costs(model_costs, len(models))
        choice = self.choose(scores, model_costs)
        reasons = [
            f"best P(correct) - {self.cost_weight:g} x relative cost: {models[c]} "
            f"(P={s[c]:.2f}, ${costs[c]:.2g}/query)"
            for s, c in zip(scores, choice)
        ]
        return Decision(choice, reasons, models)

    @property
    def label(self) -> str:
        return f"cost-aware:{self.cost_weight:g}"


class RandomLikely(Policy):
    """SelectLLM's Random policy: a seeded uniform pick among the models predicted correct
    (P >= ``threshold``); if none is, the argmax."""

    name = "random-likely"

    def __init__(self, threshold: float = 0.5, seed: int = 0):
        self.threshold = _probability("random-likely: the threshold", threshold)
        self.seed = seed

    @property
    def label(self) -> str:
        return f"random-likely:{self.threshold:g}"


    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        likely = scores >= self.threshold
        draw = np.random.default_rng(self.seed).random(scores.shape)
        choice = np.argmax(np.where(likely, draw, -1.0), axis=1)
        none = ~likely.any(axis=1)
        choice[none] = ArgMax().choose(scores[none], model_costs)
        return choice

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        choice = self.choose(scores, model_costs)
        reasons = [
            f"random pick among {int((s >= self.threshold).sum())} model(s) with P >= {self.threshold:g}: {models[c]}"
            if (s >= self.threshold).any() else f"no model has P >= {self.threshold:g}; " + _argmax_reason(s, c, models)
            for s, c in zip(scores, choice)
        ]
        return Decision(choice, reasons, models)


class CheapestLikely(Policy):
    """SelectLLM's Sorted policy with models sorted by price: the cheapest model predicted
    correct (P >= ``threshold``); if none is, the argmax."""

    name = "sorted"

    def __init__(self, threshold: float = 0.5):
        self.threshold = _probability("sorted: the threshold", threshold)

    @property
    def label(self) -> str:
        return f"sorted:{self.threshold:g}"


    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        costs = _known_costs(model_costs, scores.shape[1])
        likely = scores >= self.threshold
        choice = np.argmin(np.where(likely, costs[None, :], np.inf), axis=1)
        none = ~likely.any(axis=1)
        choice[none] = _argmax_cheapest(scores[none], costs)
        return choice

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        choice = self.choose(scores, model_costs)
        reasons = [
            f"cheapest model with P >= {self.threshold:g}: {models[c]} (P={s[c]:.2f})"
            if s[c] >= self.threshold else f"no model has P >= {self.threshold:g}; " + _argmax_reason(s, c, models)
            for s, c in zip(scores, choice)
        ]
        return Decision(choice, reasons, models)
