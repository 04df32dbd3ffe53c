"""Pool selection (Leeroo's expert selection): which K models together answer the most.

Oracle coverage, the share of queries at least one pool model answers, is monotone and
submodular in the pool, so adding greedily the model with the largest marginal gain is within
1 - 1/e of the best pool of that size; where it is cheap, exhaustive search says how close it
really is. Each greedy pool is then re-scored with a trained router under cross-validation,
which is what a user would get.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from herd import metrics
from herd.data import Matrix, Outcomes
from herd.errors import HerdError
from herd.foldfits import FoldFits
from herd.policies import make_policy, policy_inputs
from herd.routers import Router, make_router
from herd.tuning import fit_in_fold

EXHAUSTIVE_MAX_K, EXHAUSTIVE_MAX_POOLS = 3, 200_000  # pool sizes and pools (n choose k) searched exhaustively


@dataclass
class Constraints:
    budget: float | None = None  # USD per query, each query priced at the cheapest pool model that is right
    max_params: float | None = None  # billions of parameters to host, summed over open models
    must_include: list[str] = field(default_factory=list)
    only_open: bool = False


@dataclass
class Step:
    k: int
    added: str
    oracle: float
    gain: float
    pool_cost: float | None
    routed_accuracy: float | None = None
    best_single: float | None = None


# What the figures of a selection are: the pools are chosen in-sample, only their routing is cross-validated.
CAPTION = ("Pools are chosen on all the data (in-sample); the routed and best-single columns are "
           "cross-validated for the chosen pool.")


class SelectError(HerdError, ValueError):
    """Constraints or models that no pool can satisfy; the message says which."""


@dataclass
class Selection:
    """``select_pool``'s result: the greedy path (one Step per pool size, with its routed and
    best-single accuracy under CV), the exhaustive check per small k (the best pool and its
    coverage, or None where too many pools), and what produced them."""

    data: str
    k: int
    constraints: Constraints
    router: str
    policy: str
    folds: int
    seed: int
    n_queries: int
    n_models: int
    steps: list[Step]
    exhaustive: dict[int, tuple[list[str], float] | None]

    @property
    def chosen(self) -> list[str]:
        return [st.added for st in self.steps]

    def columns(self) -> list[str]:
        return ["k", "adds", "oracle %", "gain", "pool cost/query", f"{self.router}+{self.policy} % (CV)",
                "best single % (CV)"]

    def rows(self) -> list[list[str]]:
        """The table of the greedy path, formatted once for the console and the report alike."""
        return [[str(st.k), st.added, f"{100 * st.oracle:.2f}", f"+{100 * st.gain:.2f}",
                 "n/a" if st.pool_cost is None else f"${st.pool_cost:.3g}",
                 "n/a" if st.routed_accuracy is None else f"{100 * st.routed_accuracy:.2f}",
                 f"{100 * st.best_single:.2f}"] for st in self.steps]

    def checks(self) -> list[str]:
        """Per small k, how the greedy pool's coverage compares with the best possible."""
        out = []
        for j, best in self.exhaustive.items():
            if best is None:
                out.append(f"k={j}: exhaustive search skipped (over {EXHAUSTIVE_MAX_POOLS:,} pools)")
            elif j <= len(self.steps):
                out.append(f"k={j}: greedy oracle {100 * self.steps[j - 1].oracle:.2f}% vs best possible "
                           f"{100 * best[1]:.2f}% ({', '.join(best[0])})")
        return out

    def to_dict(self) -> dict:
        """The contents of select.json."""
        c = self.constraints
        return {"data": self.data, "k": self.k,
                "constraints": {"budget": c.budget, "max_params": c.max_params, "must_include": list(c.must_include),
                                "tags": ["open"] if c.only_open else []},
                "router": self.router, "policy": self.policy, "folds": self.folds,
                "selection": "in-sample (all data); routed scores under CV", "seed": self.seed,
                "greedy": as_dict(self.steps),
                "exhaustive": {str(j): None if b is None else {"models": b[0], "oracle": b[1]}
                               for j, b in self.exhaustive.items()}}


def select_pool(data: Outcomes, k: int, constraints: Constraints | None = None, *, router: str = "logistic",
                policy: str | object = "safe", folds: int = 5, seed: int = 0) -> Selection:
    """Choose up to ``k`` models of ``data`` that together answer the most (greedy on oracle
    coverage under ``constraints``, checked against exhaustive search where small), then re-score
    each greedy pool with ``router`` + ``policy`` (a spec or a policy) under ``folds``-fold CV."""
    proto = make_router(router, seed=seed)
    chosen_policy = make_policy(policy) if isinstance(policy, str) else policy
    m = data.matrix()
    params = {}
    if "params_b" in data.models:
        params = {r.model: float(r.params_b) for r in data.models.itertuples() if r.params_b == r.params_b}
    chooser = PoolSelector(m, constraints or Constraints(), params)
    steps = chooser.greedy(k)
    if not steps:
        raise SelectError("no model satisfies the constraints")
    proto.prepare(m.texts)
    for st in steps:
        st.routed_accuracy, st.best_single = routed_accuracy(m, [x.added for x in steps[:st.k]], proto,
                                                             chosen_policy, folds, seed)
    exhaustive = {j: chooser.exhaustive(j) for j in range(1, min(k, EXHAUSTIVE_MAX_K) + 1)}
    return Selection(data.origin, k, chooser.c, router, chosen_policy.label, folds, seed, m.n_queries, len(m.models),
                     steps, exhaustive)


def _mean_cost(column: np.ndarray) -> float:
    return float(np.nanmean(column)) if not np.isnan(column).all() else np.inf


def coverage(y: np.ndarray, pool: list[int]) -> float:
    return float(y[:, pool].max(axis=1).mean()) if pool else 0.0


def pool_cost(y: np.ndarray, cost: np.ndarray, pool: list[int]) -> float | None:
    """Mean cost per query if each query went to the cheapest pool model that answers it (or
    the cheapest pool model when none does): the cost side of oracle coverage."""
    c = np.nan_to_num(cost[:, pool], nan=np.inf)
    if np.isinf(c).all():
        return None
    right = y[:, pool] > 0
    cheapest_right = np.where(right, c, np.inf).min(axis=1)
    spent = np.where(np.isfinite(cheapest_right), cheapest_right, c.min(axis=1))
    return float(spent[np.isfinite(spent)].mean())


class PoolSelector:
    def __init__(self, m: Matrix, constraints: Constraints, params: dict[str, float] | None = None):
        self.m, self.c = m, constraints
        self.y = m.labels
        self.params = params or {}
        unknown = [x for x in constraints.must_include if x not in m.models]
        if unknown:
            raise SelectError(f"--must-include {unknown}: not in the data's models {m.models}")
        allowed = [j for j, name in enumerate(m.models)
                   if not constraints.only_open or (m.owned is not None and m.owned[j])]
        if constraints.only_open and m.owned is None:
            raise SelectError("--tags open needs open_weights in models.csv")
        self.allowed = allowed
        self.must = [m.models.index(x) for x in constraints.must_include]
        if constraints.only_open and any(j not in allowed for j in self.must):
            raise SelectError("a --must-include model is not open-weights, so --tags open rules it out")

    def feasible(self, pool: list[int]) -> bool:
        if self.c.budget is not None:
            spent = pool_cost(self.y, self.m.cost, pool)
            if spent is None or spent > self.c.budget + 1e-15:
                return False
        if self.c.max_params is not None:
            # Open models are hosted; without open_weights in the data, every model counts.
            hosted = sum(self.params.get(self.m.models[j], math.nan) for j in pool
                         if self.m.owned is None or self.m.owned[j])
            if math.isnan(hosted) or hosted > self.c.max_params:
                return False
        return True

    def greedy(self, k: int) -> list[Step]:
        """Up to k steps; fewer when no feasible model adds coverage."""
        pool, steps = [], []
        for j in self.must:  # required models come first, in the order given
            gain = coverage(self.y, pool + [j]) - coverage(self.y, pool)
            pool.append(j)
            steps.append(Step(len(pool), self.m.models[j], coverage(self.y, pool), gain, pool_cost(self.y, self.m.cost, pool)))
        while len(pool) < k:
            base = coverage(self.y, pool)
            # Largest gain; among ties the cheaper model, then the one listed first.
            options = [(coverage(self.y, pool + [j]) - base, -_mean_cost(self.m.cost[:, j]), -j)
                       for j in self.allowed if j not in pool and self.feasible(pool + [j])]
            if not options or max(options)[0] <= 0:
                break  # nothing feasible adds a query no pool model answers yet
            gain, _, j = max(options)
            j = -j
            pool.append(j)
            steps.append(Step(len(pool), self.m.models[j], coverage(self.y, pool), gain, pool_cost(self.y, self.m.cost, pool)))
        return steps

    def exhaustive(self, k: int) -> tuple[list[str], float] | None:
        """The best feasible pool of size k by coverage, where k and the pool are small enough."""
        if k > EXHAUSTIVE_MAX_K or math.comb(len(self.allowed), k) > EXHAUSTIVE_MAX_POOLS:
            return None
        best, best_cov = None, -1.0
        rest = [j for j in self.allowed if j not in self.must]
        for extra in itertools.combinations(rest, max(0, k - len(self.must))):
            pool = self.must + list(extra)
            if not self.feasible(pool):
                continue
            cov = coverage(self.y, pool)
            if cov > best_cov + 1e-12:
                best, best_cov = pool, cov
        return None if best is None else ([self.m.models[j] for j in best], best_cov)


def routed_accuracy(m: Matrix, pool: list[str], router: Router, policy, folds: int,
                    seed: int) -> tuple[float | None, float]:
    """Out-of-fold accuracy of ``router`` + ``policy`` on the pool (a policy with ``fit`` is
    tuned inside each training split; None where the policy cannot serve this pool, say an
    agreement cascade naming a model outside it), and of the pool's best single model chosen
    on each training split."""
    sub = m.columns(pool)
    y = sub.labels
    if len(pool) == 1:
        acc = float(y[:, 0].mean())
        return acc, acc
    routed, single = np.empty(len(y)), np.empty(len(y))
    splits = sub.kfold(folds, seed)
    for tr, te in splits:
        single[te] = y[te, metrics.best_model(y[tr], sub.cost[tr])]
    try:
        for f, policy_f, scores in _tuned_folds(sub, splits, router, policy, seed):
            tr, te = splits[f]
            held = sub.take(te)
            choice = policy_f.choose(scores, metrics.mean_cost_per_model(sub.cost[tr]),
                                     **policy_inputs(policy_f, held.observed, held.answer_codes, tasks=held.tasks))
            routed[te] = y[te, choice]
    except ValueError:
        return None, float(single.mean())
    return float(routed.mean()), float(single.mean())


def _tuned_folds(sub: Matrix, splits, router: Router, policy, seed: int):
    """(fold, tuned policy, router's scores of the fold's test queries or None) per fold, fitted
    as `herd eval` fits them (herd.foldfits), so a pool scores here what it scores there."""
    if policy.uses_scores:
        for (f, _), fit in FoldFits(sub, splits, {"router": router}, [policy], seed):
            yield f, fit.policies[0], fit.scores
    else:  # the answers decide: no router to fit
        for f, (tr, _) in enumerate(splits):
            yield f, fit_in_fold(None, policy, sub.take(tr), seed).policy, None


def as_dict(steps: list[Step]) -> list[dict]:
    return [asdict(s) for s in steps]
