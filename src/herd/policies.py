"""Policies turn a router's scores (and model prices) into a choice and a reason. They never see text."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Decision:
    """``choice[i]`` is the model index for query i; ``reasons[i]`` says why."""

    choice: np.ndarray
    reasons: list[str]


def _known_costs(model_costs: np.ndarray | None, n_models: int) -> np.ndarray:
    """Mean cost per query for each model; an unknown cost counts as the dearest known one."""
    if model_costs is None:
        return np.zeros(n_models)
    c = np.asarray(model_costs, float)
    if np.isnan(c).all():
        return np.zeros(n_models)
    return np.where(np.isnan(c), np.nanmax(c), c)


def _argmax_cheapest(values: np.ndarray, costs: np.ndarray) -> np.ndarray:
    """Row-wise argmax; among (near-)ties, the cheaper model."""
    top = values >= values.max(axis=1, keepdims=True) - 1e-12
    return np.argmin(np.where(top, costs[None, :], np.inf), axis=1)


class ArgMax:
    """Pick the model most likely to be right; ties go to the cheaper model."""

    name = "argmax"

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None) -> np.ndarray:
        return _argmax_cheapest(scores, _known_costs(model_costs, scores.shape[1]))

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None) -> Decision:
        choice = self.choose(scores, model_costs)
        return Decision(choice, [_argmax_reason(s, c, models) for s, c in zip(scores, choice)])

    def __repr__(self) -> str:
        return "ArgMax()"


class CostAware:
    """Maximize P(correct) - cost_weight * cost / (dearest model's cost): one knob from quality to thrift."""

    name = "cost-aware"

    def __init__(self, cost_weight: float = 0.0):
        if cost_weight < 0:
            raise ValueError(f"cost_weight must be >= 0, got {cost_weight}")
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
        return Decision(choice, reasons)

    def __repr__(self) -> str:
        return f"CostAware(cost_weight={self.cost_weight:g})"


def _argmax_reason(scores: np.ndarray, chosen: int, models: list[str]) -> str:
    if len(models) == 1:
        return f"only model: {models[chosen]}"
    rest = np.delete(np.arange(len(models)), chosen)
    runner = rest[np.argmax(scores[rest])]
    return (
        f"highest predicted P(correct): {models[chosen]} {scores[chosen]:.2f} "
        f"(next {models[runner]} {scores[runner]:.2f})"
    )
