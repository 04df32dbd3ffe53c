"""Every metric herd reports, defined once, as pure functions of arrays.

Conventions: ``correct`` and ``cost`` are (n_queries, n_models) arrays; ``correct`` has no NaN
(a missing outcome counts as wrong, see ``Matrix.labels``); ``cost`` is NaN where unknown.
A choice is an int array of model indices, one per query.
"""

from __future__ import annotations

import numpy as np


def picked(values: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """The chosen model's value for every query."""
    return values[np.arange(len(choice)), choice]


def summed(values: np.ndarray, called: np.ndarray) -> np.ndarray:
    """Per query, the sum of ``values`` over every model called (a cascade pays each call);
    NaN where any called model's value is unknown."""
    v = np.where(called, values, 0.0)
    return np.where((called & np.isnan(values)).any(axis=1), np.nan, np.nansum(v, axis=1))


def accuracy(correct_of_choice: np.ndarray) -> float:
    return float(np.mean(correct_of_choice)) if len(correct_of_choice) else float("nan")


def mean_known(values: np.ndarray) -> tuple[float | None, float]:
    """Mean over the known (non-NaN) values and the share that is known.

    Costs and latencies are partly unknown in public data; the share tells how much of the
    figure rests on data.
    """
    values = np.asarray(values, float)
    known = ~np.isnan(values)
    if not known.any():
        return None, 0.0
    return float(values[known].mean()), float(known.mean())


def mean_cost_per_model(cost: np.ndarray) -> np.ndarray:
    """Each model's mean known cost per query; NaN for a model with no known cost."""
    out = [mean_known(cost[:, j])[0] for j in range(cost.shape[1])]
    return np.array([np.nan if c is None else c for c in out])


def oracle_choice(correct: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Per query, the cheapest model that is right (by score); if none is, the cheapest model.

    Models of unknown cost rank after every priced model.
    """
    c = np.where(np.isnan(cost), np.inf, cost)
    best = correct.max(axis=1, keepdims=True)
    # Among models reaching the best score, take the cheapest; ties to the lowest index.
    masked = np.where(correct >= best, c, np.inf)
    choice = np.argmin(masked, axis=1)
    none_right = best[:, 0] <= 0
    choice[none_right] = np.argmin(c[none_right], axis=1)
    return choice


def oracle_accuracy(correct: np.ndarray) -> float:
    """Share of queries some model gets right (mean of the best score for fractional data)."""
    return float(correct.max(axis=1).mean())


def random_expected(correct: np.ndarray, cost: np.ndarray) -> tuple[float, float | None]:
    """Expected accuracy and cost of picking a model uniformly at random for each query."""
    per_model = mean_cost_per_model(cost)
    known = per_model[~np.isnan(per_model)]
    return float(correct.mean()), (float(known.mean()) if len(known) else None)


def model_accuracies(correct: np.ndarray) -> np.ndarray:
    return correct.mean(axis=0)


def best_model(correct: np.ndarray, cost: np.ndarray | None = None) -> int:
    """Index of the most accurate model; ties go to the cheaper model, then the lower index."""
    acc = model_accuracies(correct)
    top = np.flatnonzero(np.isclose(acc, acc.max()))
    if cost is not None and len(top) > 1:
        mean_cost = np.array([mean_known(cost[:, j])[0] or np.inf for j in top])
        return int(top[np.argmin(mean_cost)])
    return int(top[0])


def task_best_choice(correct: np.ndarray, cost: np.ndarray, train_tasks, test_tasks, fallback: int) -> np.ndarray:
    """The "task known" reference: for each test query, the best model on the training queries
    of its task (ties to the cheaper); ``fallback`` for a task unknown or unseen in training."""
    train_tasks, test_tasks = np.asarray(train_tasks, dtype=object), np.asarray(test_tasks, dtype=object)
    out = np.full(len(test_tasks), fallback)
    for t in {t for t in test_tasks if t is not None}:
        seen = train_tasks == t
        if seen.any():
            out[test_tasks == t] = best_model(correct[seen], cost[seen])
    return out


def shuffled_expected(correct: np.ndarray, cost: np.ndarray, choice: np.ndarray) -> tuple[float, float | None]:
    """A cost-matched random control: the models of ``choice`` in its proportions, dealt to
    queries at random. Its expected accuracy and mean cost: sum over models of share x the
    model's mean. It tells routing (the right model for the query) from mere mixing."""
    share = np.bincount(choice, minlength=correct.shape[1]) / len(choice)
    per_cost = mean_cost_per_model(cost)
    used = share > 0
    known = used & ~np.isnan(per_cost)
    spent = float(share[known] @ per_cost[known] / share[known].sum()) if known.any() else None
    return float(share @ correct.mean(axis=0)), spent


def vote_choice(codes: np.ndarray, priority: np.ndarray) -> np.ndarray:
    """Majority vote over answers: per query, the model whose answer the most models give.

    ``codes`` is (n_queries, n_models) of answer codes (equal codes: answers that grade alike;
    -1: no answer). ``priority`` ranks the models (0 = first): a tie between equally common
    answers goes to the answer of the best-ranked model giving one, and the returned model is
    that answer's best-ranked giver. A query with no answer at all goes to the best-ranked model.
    The vote is right where the returned model is right (its answer is the voted one).
    """
    codes = np.asarray(codes)
    order = np.argsort(priority, kind="stable")
    ranked = codes[:, order]
    n, k = ranked.shape
    same = (ranked[:, :, None] == ranked[:, None, :]) & (ranked[:, :, None] >= 0)
    count = same.sum(axis=2)  # per model: how many models give its answer
    return order[np.argmax(count, axis=1)]  # first max: the best-ranked giver of a top answer


def fanout_latency(latency: np.ndarray, first: np.ndarray, then: np.ndarray) -> np.ndarray:
    """Per query, the latency of calls made at once (``first``: the slowest of them) followed
    by calls made in turn (``then``: added up); NaN where a called model's latency is unknown.
    ``first`` and ``then`` are (n_queries, n_models) bool."""
    lat = np.asarray(latency, float)
    unknown = ((first | then) & np.isnan(lat)).any(axis=1)
    slowest = np.where(first, np.nan_to_num(lat), 0.0).max(axis=1)
    return np.where(unknown, np.nan, slowest + np.where(then, np.nan_to_num(lat), 0.0).sum(axis=1))


def gap_closed(method: float, best_single: float, oracle: float) -> float | None:
    """(method - best single) / (oracle - best single); None when the oracle adds nothing."""
    if oracle - best_single <= 1e-12:
        return None
    return (method - best_single) / (oracle - best_single)


def pareto_frontier(costs, accs) -> np.ndarray:
    """Indices of points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    costs, accs = np.asarray(costs, float), np.asarray(accs, float)
    order = np.lexsort((-accs, costs))
    keep, best = [], -np.inf
    for i in order:
        if accs[i] > best:
            keep.append(i)
            best = accs[i]
    return np.array(keep, dtype=int)


def cost_quality_hull(costs, accs) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing upper convex hull of (cost, accuracy) points, sorted by cost.

    Any point on it is reachable by mixing the two routers (or settings) at its ends, which is
    why RouterBench scores the hull rather than the raw points.
    """
    f = pareto_frontier(costs, accs)
    pts = np.column_stack([np.asarray(costs, float)[f], np.asarray(accs, float)[f]])
    hull: list[np.ndarray] = []
    for p in pts:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], p) >= 0:
            hull.pop()
        hull.append(p)
    h = np.array(hull)
    return h[:, 0], h[:, 1]


def _cross(o, a, b) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def curve_value(hull_costs, hull_accs, at) -> np.ndarray:
    """Accuracy reachable at each cost in ``at``: 0 below the cheapest point, flat past the last."""
    at = np.asarray(at, float)
    v = np.interp(at, hull_costs, hull_accs)
    return np.where(at < hull_costs[0] - 1e-15, 0.0, v)


def aiq(costs, accs, cost_range: tuple[float, float] | None = None, grid: int = 2001) -> float:
    """Average quality over a cost range: normalized area under the cost-quality hull (AIQ).

    ``cost_range`` defaults to the points' own range; compare methods over one shared range.
    """
    hc, ha = cost_quality_hull(costs, accs)
    lo, hi = cost_range if cost_range is not None else (hc[0], hc[-1])
    if hi - lo <= 0:
        return float(curve_value(hc, ha, [lo])[0])
    xs = np.linspace(lo, hi, grid)
    return float(np.trapezoid(curve_value(hc, ha, xs), xs) / (hi - lo))


def cost_to_match(costs, accs, target: float) -> float | None:
    """Lowest cost at which the hull reaches ``target`` accuracy; None if it never does."""
    hc, ha = cost_quality_hull(costs, accs)
    if ha[-1] < target - 1e-12:
        return None
    if ha[0] >= target:
        return float(hc[0])
    return float(np.interp(target, ha, hc))


def pgr_curve(preference, strong_correct, weak_correct) -> tuple[np.ndarray, np.ndarray]:
    """RouteLLM's two-model view: send the queries with the highest ``preference`` for the strong
    model to it, for every share of strong calls from 0 to 1, and measure the performance gap
    recovered, PGR = (accuracy - weak) / (strong - weak). Returns (share of strong calls, PGR)."""
    preference = np.asarray(preference, float)
    s, w = np.asarray(strong_correct, float), np.asarray(weak_correct, float)
    n = len(preference)
    order = np.argsort(-preference, kind="stable")
    gain = np.concatenate([[0.0], np.cumsum((s - w)[order])])
    acc = (w.sum() + gain) / n
    span = s.mean() - w.mean()
    pgr = (acc - w.mean()) / span if abs(span) > 1e-12 else np.zeros(n + 1)
    return np.arange(n + 1) / n, pgr


def apgr(share, pgr) -> float:
    """Average performance gap recovered: the area under the PGR curve over call shares 0..1."""
    return float(np.trapezoid(pgr, share))


def cpt(share, pgr, target: float) -> float | None:
    """Call-performance threshold: the least share of strong calls whose PGR reaches ``target``."""
    hit = np.flatnonzero(np.asarray(pgr) >= target - 1e-12)
    return float(share[hit[0]]) if len(hit) else None
