"""Exploration: a share of queries sent to a model drawn uniformly, with known propensities."""

from __future__ import annotations

import numpy as np

from herd.policies.base import Decision, Policy, PolicyError, _probability


def explore_draw(eps: float, own: np.ndarray, allowed: np.ndarray,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epsilon-greedy over (n,) own choices and an (n, k) mask of the models allowed per query:
    the (n,) choices, their propensities and whether exploration made them. With probability
    ``eps`` a uniform draw among the allowed models, else the own choice; a query with no
    allowed model keeps its own choice."""
    n = len(own)
    count = allowed.sum(axis=1)
    explored = (rng.random(n) < eps) & (count > 0)
    uniform = np.argmax(np.where(allowed, rng.random(allowed.shape), -1.0), axis=1)
    choice = np.where(explored, uniform, own)
    return choice, explore_propensity(eps, choice == own, allowed[np.arange(n), choice], count), explored


def explore_propensity(eps: float, own, allowed, count):
    """The probability epsilon-greedy gives a choice: whether it is the policy's own pick and
    whether it is among the ``count`` allowed models (scalars or arrays alike)."""
    return np.where(count > 0, (1 - eps) * own + eps * allowed / np.maximum(count, 1), 1.0)


class Explore(Policy):
    """Epsilon-greedy exploration around a policy: with probability ``eps`` a uniform draw among
    the models allowed for the query, else the policy's own choice. Some traffic then reaches
    models the policy would not pick, and every choice has a known probability (its propensity),
    which off-policy evaluation of another router divides by. The draw is only ever among the
    allowed models, so exploration never relaxes a constraint."""

    name = "explore"

    def __init__(self, policy: Policy, eps: float, seed: int | None = 0):
        if not policy.picks_from_scores:
            raise PolicyError(f"explore: {policy.label!r} asks several models per query; exploration wraps a policy "
                             "that picks one model from the router's scores")
        self.policy = policy
        self.eps = _probability("explore: the exploration rate", eps)
        self.seed = seed

    @property
    def label(self) -> str:
        return f"{self.policy.label}+explore:{self.eps:g}"

    # What it reads and whether it is tuned: the wrapped policy's.
    @property
    def needs_fit(self) -> bool:
        return self.policy.needs_fit

    @property
    def reads_tasks(self) -> bool:
        return self.policy.reads_tasks

    def fit(self, *args, **kwargs) -> Explore:
        self.policy = self.policy.fit(*args, **kwargs)
        return self

    def anchor(self, task: str | None = None) -> int | None:
        return self.policy.anchor(task)

    def summary(self) -> str | None:
        return self.policy.summary()

    def draw(self, own: np.ndarray, allowed: np.ndarray,
             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """From (n,) own choices and an (n, k) mask of the models allowed per query: the (n,)
        choices, their propensities and whether exploration made them. A query with no allowed
        model keeps its own choice."""
        return explore_draw(self.eps, own, allowed, rng)

    def probabilities(self, scores: np.ndarray, model_costs: np.ndarray | None = None, allowed=None,
                      **kwargs) -> np.ndarray:
        """(n_queries, n_models): the probability this policy gives each model, the allowed ones
        ((n, k) mask, default all) sharing ``eps`` equally."""
        allowed = np.ones(scores.shape, bool) if allowed is None else np.asarray(allowed, bool)
        own = self.policy.choose(scores, model_costs, **kwargs)
        count = allowed.sum(axis=1, keepdims=True)
        p = np.where(count > 0, self.eps * allowed / np.maximum(count, 1), 0.0)
        p[np.arange(len(own)), own] += np.where(count[:, 0] > 0, 1 - self.eps, 1.0)
        return p

    def choose(self, scores: np.ndarray, model_costs: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """(n_queries,) choices, drawn with a generator seeded afresh on each call, so a replay
        (or two routers compared on one split) meets the same draws."""
        own = self.policy.choose(scores, model_costs, **kwargs)
        return self.draw(own, np.isfinite(scores), np.random.default_rng(self.seed))[0]

    def decide(self, scores: np.ndarray, models: list[str], model_costs: np.ndarray | None = None,
               **kwargs) -> Decision:
        own = self.policy.decide(scores, models, model_costs, **kwargs)
        allowed = np.isfinite(scores)
        choice, _, explored = self.draw(own.choice, allowed, np.random.default_rng(self.seed))
        reasons = [f"explored ({self.eps:g}): drew {models[c]} uniformly among {int(ok.sum())} allowed models; the "
                   f"policy's own pick: {why}" if e else why
                   for c, ok, e, why in zip(choice, allowed, explored, own.reasons)]
        return Decision(choice, reasons, models)
