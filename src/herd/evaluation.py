"""Honest offline evaluation: cross-validated by query, against oracle, random, single models,
the train-chosen best single model, majority vote and each other. Computes; never prints."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np

from herd import __version__, metrics
from herd.blend import evaluate_blends
from herd.data import HerdDataError, Matrix, Outcomes
from herd.foldfits import PARALLEL_MIN_OUTCOMES, FoldFits
from herd.policies import (ArgMax, Budget, Cascade, CostAware, cascade_called, cascade_choice, cascade_thresholds,
                           policy_inputs)
from herd.routers import Router, make_router
from herd.tuning import fit_in_fold
from herd.workers import stop as stop_workers
from herd.workers import warm_up, worker_count

# Cost weights swept for each router's cost-quality curve (relative to the dearest model).
COST_WEIGHTS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 1000.0)
KINDS = ("oracle", "random", "single", "best-single", "best-on-test", "task-best", "vote", "router", "random-control")

Progress = Callable[[str, int, int], None]


@dataclass
class MethodResult:
    """One row of metrics.json: a method's pooled out-of-fold figures on one benchmark."""

    source: str
    benchmark: str
    method: str
    kind: str
    accuracy: float
    cost_usd: float | None
    cost_estimated: bool
    latency_s: float | None
    n: int
    gap_closed: float | None
    best_single: str
    cost_coverage: float = 1.0  # share of queries whose chosen model has a known cost
    router_ms: float | None = None  # routing time per query (featurize + score + decide)
    aiq: float | None = None
    cost_to_match_best_single: float | None = None
    # Two-model pools only (RouteLLM's metrics): area under the PGR curve, least strong-call share for 50/80% PGR.
    apgr: float | None = None
    cpt50: float | None = None
    cpt80: float | None = None
    ownership: float | None = None  # share of queries answered by open-weights models (None: no such data)
    accepted: float | None = None  # an agreement cascade's share of queries answered by its first stage


@dataclass(repr=False)
class BenchmarkResult:
    """One benchmark's evaluation: a ``MethodResult`` row per method (``.to_frame()`` for a
    table), the cost-quality curves, notes and, for a mixture, per-task figures."""

    source: str
    benchmark: str
    n_queries: int
    models: list[str]
    rows: list[MethodResult]
    unpriced_models: list[str]
    estimated_cost_models: list[str]
    best_single_by_fold: list[str]
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    embedding_engine: str | None = None  # the sentence encoder engine the fitted routers read, if any
    # Per cascade method: {threshold, accuracy, cost_usd, ownership} over fixed thresholds.
    cascade_curves: dict[str, list[dict]] = field(default_factory=dict)
    # Conversations replayed turn by turn (herd.blend): per method, accuracy per turn and cost.
    blends: dict | None = None
    blend_log: list[dict] = field(default_factory=list)  # per (conversation, turn, blend): the choice
    single_aiq: float | None = None
    cost_range: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    # A mixture's tasks: {task: n_queries}; per method, accuracy per task; per routed method, the
    # share of each task's queries sent to each model.
    tasks: dict[str, int] = field(default_factory=dict)
    per_task: dict[str, dict[str, float]] = field(default_factory=dict)
    task_shares: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    fingerprint: str = ""  # of the queries, models and outcomes evaluated (Matrix.fingerprint)

    def row(self, kind: str, method: str | None = None) -> MethodResult:
        for r in self.rows:
            if r.kind == kind and (method is None or r.method == method):
                return r
        raise KeyError((kind, method))

    def to_frame(self):
        """A pandas DataFrame, one row per method (the MethodResult fields as columns)."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows])

    def __repr__(self) -> str:
        return (f"BenchmarkResult({self.source}/{self.benchmark}: {self.n_queries} queries, {len(self.models)} models, "
                f"{len(self.rows)} methods)")


# metrics.json's layout version: raised when a field changes meaning or goes away.
METRICS_SCHEMA = 2


@dataclass(repr=False)
class Evaluation:
    """What ``evaluate`` returns: a ``BenchmarkResult`` per benchmark; ``.to_frame()`` gives
    every method row of every benchmark, ``.to_json()`` the metrics.json document."""

    dataset: str
    folds: int
    seed: int
    policy: str
    benchmarks: list[BenchmarkResult]
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    embedding_engine: str | None = None  # the sentence encoder engine of routers reading embeddings

    @property
    def fingerprint(self) -> str:
        """A short hash of every benchmark's queries, models and outcomes."""
        return hashlib.sha256("\x1f".join(b.fingerprint for b in self.benchmarks).encode()).hexdigest()[:16]

    def to_frame(self):
        """A pandas DataFrame, one row per (benchmark, method), the MethodResult fields as columns."""
        import pandas as pd

        return pd.DataFrame([asdict(r) for b in self.benchmarks for r in b.rows])

    def __repr__(self) -> str:
        names = ", ".join(f"{b.source}/{b.benchmark}" for b in self.benchmarks[:4])
        more = f" and {len(self.benchmarks) - 4} more" if len(self.benchmarks) > 4 else ""
        return f"Evaluation({self.dataset}: {names}{more}; policies {self.policy})"

    def to_json(self) -> dict:
        """The metrics.json contract (see docs/data.md)."""
        return {
            "schema_version": METRICS_SCHEMA,
            "herd_version": __version__,
            "created": self.created,
            "data_fingerprint": self.fingerprint,
            "dataset": self.dataset,
            "folds": self.folds,
            "seed": self.seed,
            "policy": self.policy,
            "embedding_engine": self.embedding_engine,
            "results": [asdict(r) for b in self.benchmarks for r in b.rows],
            "benchmarks": [
                {
                    "source": b.source,
                    "benchmark": b.benchmark,
                    "n_queries": b.n_queries,
                    "models": b.models,
                    "unpriced_models": b.unpriced_models,
                    "estimated_cost_models": b.estimated_cost_models,
                    "best_single_by_fold": b.best_single_by_fold,
                    "single_aiq": b.single_aiq,
                    "cost_range": b.cost_range,
                    "curves": {k: [list(p) for p in v] for k, v in b.curves.items()},
                    "cascade_curves": b.cascade_curves,
                    "blends": b.blends,
                    "notes": b.notes,
                    "tasks": b.tasks,
                    "per_task": b.per_task,
                    "task_shares": b.task_shares,
                    "fingerprint": b.fingerprint,
                }
                for b in self.benchmarks
            ],
        }


def evaluate(
    data: Outcomes,
    routers: Router | list[str | Router] | dict[str, Router] = ("knn", "logistic"),
    *,
    policy=None,
    folds: int = 5,
    seed: int = 0,
    sweep: bool = True,
    progress: Progress | None = None,
    conversations: int = 0,
    mix: bool = False,
    workers: int | None = None,
) -> Evaluation:
    """k-fold cross-validation by query, separately on every (source, benchmark) in ``data``.

    ``policy`` is one policy or a list; every router is scored under each. A policy with a
    ``fit`` method (e.g. SafeArgMax) is tuned on out-of-fold scores from an inner
    cross-validation of each outer training split, never on the test fold. ``conversations``
    > 0 also replays conversations of that many turns under single models and blends, with
    the first router as the learned blend's. ``mix`` pools every benchmark of a source into one
    mixture of tasks (benchmark "mix"; folds stratified by task) instead.

    ``workers``: processes fitting the folds side by side (see ``herd.foldfits``; default
    $HERD_WORKERS, else one per core). The figures are the same bit for bit with any number.

    Returns an ``Evaluation``: one ``BenchmarkResult`` per benchmark, each with a row per
    method (oracle, random, best single, votes, every router x policy, every single model);
    ``.to_frame()`` gives them as a DataFrame. Computes only; ``herd.report`` formats.
    """
    return start_evaluation(data, routers, policy=policy, folds=folds, seed=seed, sweep=sweep, progress=progress,
                            conversations=conversations, mix=mix, workers=workers).finish()


def start_evaluation(
    data: Outcomes,
    routers: Router | list[str | Router] | dict[str, Router] = ("knn", "logistic"),
    *,
    policy=None,
    folds: int = 5,
    seed: int = 0,
    sweep: bool = True,
    progress: Progress | None = None,
    conversations: int = 0,
    mix: bool = False,
    workers: int | None = None,
) -> PendingEvaluation:
    """``evaluate`` in two steps: this starts every benchmark (its features prepared, its fits
    handed to the worker processes) and ``finish()`` returns the ``Evaluation``. An evaluation
    started before another is finished keeps the workers busy from one to the next."""
    policies = _as_list(policy)
    named = _name_routers(routers)
    groups = data.mixtures() if mix else [data.filter(source=s, benchmark=b) for s, b in data.groups()]
    parallel = (workers is not None or len(data.outcomes) >= PARALLEL_MIN_OUTCOMES) and worker_count(workers) > 1
    if parallel:
        warm_up(workers, [__name__])  # the workers import herd while the first features are prepared
    # In workers, the smallest benchmarks are started first: the workers fit them while this
    # process prepares the larger ones (a large table's n-grams take seconds to count). The
    # results keep the data's order.
    order = sorted(range(len(groups)), key=lambda i: len(groups[i].outcomes)) if parallel else range(len(groups))
    started: list[PendingBenchmark | None] = [None] * len(groups)
    try:
        for i in order:
            m = groups[i].matrix()
            run = start_matrix(m, named, policy=policies, folds=folds, seed=seed, sweep=sweep, progress=progress,
                               workers=workers)
            # Fits in workers: the next benchmark is started before this one is finished, so the
            # workers go on to its fits while this process counts its n-grams and finishes this one.
            # Fits here, or conversations (which fit here): finished now, while its features are at hand.
            if not run.in_workers or conversations:
                _add_conversations(run.finish(), m, named, conversations, folds, seed, progress)
            started[i] = run
    except BaseException:  # an error or Ctrl-C: the fits handed out are of no use now
        stop_workers()
        raise
    return PendingEvaluation(data.origin, folds, seed, ", ".join(p.label for p in policies), started)


@dataclass
class PendingEvaluation:
    """An evaluation whose benchmarks are started (``start_evaluation``); ``finish()`` waits for
    their fits and returns the ``Evaluation``."""

    dataset: str
    folds: int
    seed: int
    policy: str
    started: list[PendingBenchmark]

    def finish(self) -> Evaluation:
        try:
            results = [run.finish() for run in self.started]
        except BaseException:  # an error or Ctrl-C: the fits handed out are of no use now
            stop_workers()
            raise
        engines = sorted({b.embedding_engine for b in results if b.embedding_engine})
        return Evaluation(self.dataset, self.folds, self.seed, self.policy, results,
                          embedding_engine=", ".join(engines) or None)


def _add_conversations(result: BenchmarkResult, m: Matrix, named: dict[str, Router], turns: int, folds: int,
                       seed: int, progress: Progress | None) -> None:
    """Conversations of ``turns`` turns replayed under single models and blends, the first router
    the learned blend's (nothing when ``turns`` is 0)."""
    if not turns:
        return
    name, proto = next(iter(named.items()))
    if progress:
        progress(f"{result.source}/{result.benchmark}: conversations of {turns} turns, {name}", 0, 1)
    blends = evaluate_blends(m, proto, turns=turns, folds=folds, seed=seed)
    result.blends = {**blends.to_json(), "router": name}
    result.blend_log = [{"source": result.source, "benchmark": result.benchmark, **row} for row in blends.log_rows]


def _as_list(policy) -> list:
    if policy is None:
        return [ArgMax()]
    return list(policy) if isinstance(policy, (list, tuple)) else [policy]


def _name_routers(routers) -> dict[str, Router]:
    if isinstance(routers, Router):
        return {type(routers).__name__: routers}
    if isinstance(routers, dict):
        return dict(routers)
    out = {}
    for r in routers:
        out[r if isinstance(r, str) else type(r).__name__] = make_router(r) if isinstance(r, str) else r
    return out


def evaluate_matrix(
    m: Matrix,
    routers: dict[str, Router],
    *,
    policy=None,
    folds: int = 5,
    seed: int = 0,
    sweep: bool = True,
    progress: Progress | None = None,
    workers: int | None = None,
) -> BenchmarkResult:
    """k-fold cross-validation of ``routers`` under each policy on one table (see ``evaluate``)."""
    return start_matrix(m, routers, policy=policy, folds=folds, seed=seed, sweep=sweep, progress=progress,
                        workers=workers).finish()


@dataclass
class PendingBenchmark:
    """A benchmark whose routers' fold fits are under way: ``finish()`` does the rest and returns
    its ``BenchmarkResult`` (once; later calls return the same). ``in_workers``: the fits run in
    worker processes, so other benchmarks may be started before this one is finished."""

    _finish: Callable[[], BenchmarkResult]
    in_workers: bool
    _result: BenchmarkResult | None = None

    def finish(self) -> BenchmarkResult:
        if self._result is None:
            self._result = self._finish()
        return self._result


def start_matrix(
    m: Matrix,
    routers: dict[str, Router],
    *,
    policy=None,
    folds: int = 5,
    seed: int = 0,
    sweep: bool = True,
    progress: Progress | None = None,
    workers: int | None = None,
) -> PendingBenchmark:
    """Prepare ``m``'s features and hand the routers' fold fits to the workers (or, with one,
    leave them to ``finish``, which fits in this process)."""
    policies = _as_list(policy)
    source, benchmark = group_name(m)
    label = f"{source}/{benchmark}"
    y, cost = m.labels, m.cost
    n, k = y.shape
    splits = m.kfold(folds, seed)

    # Policies that read answers, not scores (agreement cascades), run once, not once per router.
    answer_policies = [p for p in policies if not p.uses_scores]
    policies = [p for p in policies if p.uses_scores]
    if policies:
        for name, router in routers.items():
            router.prepare(m.texts, progress=_tagged(progress, f"{label}: features for {name}"))
    else:
        routers = {}

    # The routers' fits, fold by fold: handed to worker processes first, so that the work in
    # finish (best single models, votes, agreement cascades) runs beside theirs.
    fits = FoldFits(m, splits, routers, policies, seed, workers=workers, label=label, progress=progress)

    def finish() -> BenchmarkResult:
        best_choice = np.empty(n, dtype=int)
        task_best = np.empty(n, dtype=int) if m.tasks is not None else None
        best_by_fold = []
        votes = VoteTally(m, splits) if m.answer_codes is not None else None
        answered = {p.label: AnswerTally(m, p) for p in answer_policies}
        methods = [(name, p) for name in routers for p in policies]
        router_choice = {(name, p.label): np.empty(n, dtype=int) for name, p in methods}
        router_secs = dict.fromkeys(router_choice, 0.0)
        tuned: dict[tuple[str, str], list[str]] = {key: [] for key in router_choice}
        fitted_notes: dict[str, list[str]] = {}
        sweep_choice = {name: np.empty((len(COST_WEIGHTS), n), dtype=int) for name in routers}
        router_scores = {name: np.empty((n, k)) for name in routers}
        deferral: dict[tuple[str, str], np.ndarray] = {}  # post-call cascades: held-out P(answer right)
        called: dict[tuple[str, str], np.ndarray] = {}  # post-call cascades: every model called per query
        engines: set[str | None] = set()
        fold_costs = []
        for f, (tr, te) in enumerate(splits):
            b = metrics.best_model(y[tr], cost[tr])
            best_choice[te] = b
            if task_best is not None:
                task_best[te] = metrics.task_best_choice(y[tr], cost[tr], m.tasks[tr], m.tasks[te], b)
            best_by_fold.append(m.models[b])
            fold_costs.append(metrics.mean_cost_per_model(cost[tr]))
            if votes is not None:
                votes.add(tr, te)
            if answered:
                if progress:
                    progress(f"{label}: agreement cascades, fold {f + 1}/{len(splits)}", f, len(splits))
                train = m.take(tr)
                for tally in answered.values():
                    tally.add(train, te, fold_costs[f])
        for (f, name), fit in fits:
            te, model_costs = splits[f][1], fold_costs[f]
            test = m.take(te)
            engines.add(fit.engine)
            if fit.summary is not None:
                fitted_notes.setdefault(name, []).append(fit.summary)
            scores = fit.scores
            router_scores[name][te] = scores
            for p in fit.policies:
                key = (name, p.label)
                if p.needs_fit:
                    tuned[key].append(p.summary())
                t0 = time.perf_counter()
                if p.post_call:
                    test_observed = test.observed
                    router_choice[key][te] = p.choose(scores, model_costs, test_observed)
                    called.setdefault(key, np.zeros((n, k), bool))[te] = p.called(router_choice[key][te], k)
                    deferral.setdefault(key, np.empty((n, k)))[te] = p.deferral(scores, test_observed)
                else:
                    router_choice[key][te] = p.choose(scores, model_costs, **policy_inputs(p, tasks=test.tasks))
                router_secs[key] += fit.seconds + time.perf_counter() - t0
            if sweep:
                for w, weight in enumerate(COST_WEIGHTS):
                    sweep_choice[name][w, te] = CostAware(weight).choose(scores, model_costs)
        total = len(splits) * len(routers)
        if progress:
            progress(f"{label}: done", total, total)

        cascade_curves = {f"{name} ({p.label})": cascade_curve(m, p, deferral.get((name, p.label), router_scores[name]))
                          for name, p in methods if isinstance(p, Cascade)}
        notes = [f"{name}, per fold: {_per_fold(said)}" for name, said in fitted_notes.items()]
        routed = []
        for name, p in methods:
            key = (name, p.label)
            if tuned[key]:
                notes.append(f"{name} ({p.label}), tuned per fold by inner CV: {_per_fold(tuned[key])}")
            if isinstance(p, Budget) and p.max_share is not None and p.model in m.models:
                share = float(np.mean(router_choice[key] == m.models.index(p.model)))
                notes.append(f"{name} ({p.label}): {share:.1%} of test queries went to {p.model} (target <= {p.max_share:.0%})")
            routed.append(Routed(name, f"{name} ({p.label})", router_choice[key], 1000.0 * router_secs[key] / n,
                                 called.get(key)))
        for tally in answered.values():
            if tally.choice is not None:
                routed.append(tally.routed())
                cascade_curves[tally.label] = tally.curve()
            notes += tally.notes
        if votes is not None:
            routed += votes.routed()
        else:
            notes.append("majority vote and agreement: not computed, the data has no per-model answers")
        result = summarize(m, best_choice, best_by_fold, routed, sweep_choice if sweep else {}, router_scores, notes,
                           task_best=task_best)
        result.cascade_curves = cascade_curves
        result.embedding_engine = ", ".join(sorted(e for e in engines if e)) or None
        return result

    return PendingBenchmark(finish, fits.in_workers)


def _per_fold(said: list[str]) -> str:
    """What was fitted in each fold, once when every fold agrees."""
    return f"{said[0]} (all {len(said)} folds)" if len(set(said)) == 1 and len(said) > 1 else ", ".join(said)


def group_name(m: Matrix) -> tuple[str, str]:
    """(source, benchmark) of a matrix; "mix" for a mixture of several benchmarks."""
    benchmarks = m.keys["benchmark"].unique()
    return m.keys["source"].iloc[0], ("mix" if len(benchmarks) > 1 else benchmarks[0])


# Votes reported beside the routers: every model (SelectLLM's "All LLMs"), and the top k by training accuracy.
VOTE_SIZES = (3, 5)


class VoteTally:
    """Majority votes over recorded answers, fold by fold: the models and the tie order (best
    training accuracy first) come from each training split."""

    def __init__(self, m: Matrix, splits):
        self.m = m
        n, k = m.labels.shape
        self.sizes = [s for s in VOTE_SIZES if s < k]
        self.names = ["majority vote (all models)", *(f"majority vote (top {s} on train)" for s in self.sizes)]
        self.choice = {name: np.empty(n, dtype=int) for name in self.names}
        self.called = {name: np.zeros((n, k), bool) for name in self.names}

    def add(self, tr: np.ndarray, te: np.ndarray) -> None:
        y, codes = self.m.labels, self.m.answer_codes
        costs = np.nan_to_num(metrics.mean_cost_per_model(self.m.cost[tr]), nan=np.inf)
        rank = np.lexsort((costs, -y[tr].mean(axis=0)))  # best, then cheaper
        priority = np.empty_like(rank)
        priority[rank] = np.arange(len(rank))
        for name, members in zip(self.names, [rank, *(rank[:s] for s in self.sizes)]):
            members = np.sort(members)
            self.choice[name][te] = members[metrics.vote_choice(codes[np.ix_(te, members)], priority[members])]
            self.called[name][np.ix_(te, members)] = True

    def routed(self) -> list[Routed]:
        lat = self.m.latency
        return [Routed(name, name, self.choice[name], None, self.called[name], kind="vote",
                       latency=metrics.fanout_latency(lat, self.called[name], np.zeros_like(self.called[name])))
                for name in self.names]


class AnswerTally:
    """A policy that reads answers (an agreement cascade), fitted on each training split's
    outcomes and recorded answers, and its tolerance sweep for the report."""

    def __init__(self, m: Matrix, policy):
        self.m, self.policy, self.label = m, policy, policy.label
        n, k = m.labels.shape
        self.choice = None if m.answer_codes is None else np.empty(n, dtype=int)
        self.called = np.zeros((n, k), bool)
        self.first = np.zeros((n, k), bool)
        self.accepted = np.zeros(n, bool)
        self.sweep: dict[float, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}  # choice, called, accepted
        self.summaries: list[str] = []
        self.notes: list[str] = [] if m.answer_codes is not None else [
            f"{self.label}: not computed, the data has no per-model answers"]

    def add(self, train: Matrix, te: np.ndarray, model_costs: np.ndarray) -> None:
        if self.choice is None:
            return
        m, k = self.m, self.m.labels.shape[1]
        try:
            p = fit_in_fold(None, self.policy, train).policy  # no router: the answers decide
        except ValueError as e:
            self.choice, self.notes = None, [f"{self.label}: not computed: {e}"]
            return
        codes = m.answer_codes[te]
        choice = p.choose(None, model_costs, codes)
        self.choice[te] = choice
        self.called[te] = p.called(choice, k)
        self.first[np.ix_(te, p.stage_columns)] = True
        self.accepted[te] = choice != p.last_column
        self.summaries.append(p.summary())
        for t, ch in p.sweep_choices(codes).items():
            n = len(m.labels)
            c, cl, kept = self.sweep.setdefault(t, (np.empty(n, int), np.zeros(m.labels.shape, bool), np.zeros(n, bool)))
            c[te], cl[te], kept[te] = ch, p.sweep_called(t, ch, k), ch != p.last_column

    def routed(self) -> Routed:
        self.notes.append(f"{self.label}, chosen per fold on training answers: {_per_fold(self.summaries)}")
        later = self.called & ~self.first
        return Routed(self.label, self.label, self.choice, None, self.called,
                      latency=metrics.fanout_latency(self.m.latency, self.first, later), accepted=self.accepted)

    def curve(self) -> list[dict]:
        """Accuracy, cost and ownership of the cascade each tolerance chose on training answers."""
        y, cost, owned = self.m.labels, self.m.cost, self.m.owned
        return [{"tolerance": float(t), "accuracy": metrics.accuracy(metrics.picked(y, ch)),
                 "cost_usd": metrics.mean_known(metrics.summed(cost, cl))[0],
                 "ownership": None if owned is None else float(owned[ch].mean()),
                 "first_model_share": float(kept.mean())}
                for t, (ch, cl, kept) in sorted(self.sweep.items())]


def cascade_curve(m: Matrix, cascade: Cascade, signal: np.ndarray) -> list[dict]:
    """The cascade at every fixed threshold on its held-out deferral signal (the router's
    scores, or a checked cascade's P(answer right)): what each deferral level buys in accuracy,
    cost (every model called, for a checked cascade) and ownership."""
    y = m.labels
    stages = [m.models.index(x) for x in cascade.models]
    points = []
    for t in cascade_thresholds(signal, stages):
        choice = cascade_choice(signal, stages, t)
        cost = (metrics.summed(m.cost, cascade_called(choice, stages, len(m.models))) if cascade.post_call
                else metrics.picked(m.cost, choice))
        points.append({"threshold": float(t), "accuracy": metrics.accuracy(metrics.picked(y, choice)),
                       "cost_usd": metrics.mean_known(cost)[0],
                       "ownership": None if m.owned is None else float(m.owned[choice].mean()),
                       "first_model_share": float(np.mean(choice == stages[0]))})
    return points


def evaluate_trained(trained, data: Outcomes, *, sweep: bool = True) -> Evaluation:
    """Score a router trained earlier (``herd train``) on the given data as a held-out test set.

    The best single model is the one the router's training data named. Queries the router
    was trained on are counted and reported, since their figures are optimistic. A router
    trained on a mixture (several benchmarks) is scored on mixtures, where a query's task is
    its benchmark, as in training.
    """
    from herd.artifact import query_keys

    name = trained.manifest["router"]["name"]
    label = trained.policy.label
    best_name = trained.manifest["validation"]["best_single"]
    results = []
    if len(trained.manifest["training_data"]["groups"]) > 1:
        known = set(data.outcomes["model"])
        subs = data.filter(models=[x for x in trained.models if x in known]).mixtures()
    else:
        subs = [data.filter(source=s, benchmark=b) for s, b in data.groups()]
    for sub in subs:
        source, benchmark = sub.groups()[0][0], ("mix" if len(sub.groups()) > 1 else sub.groups()[0][1])
        missing = sorted(set(trained.models) - set(sub.outcomes["model"]))
        if missing:
            raise HerdDataError(f"{source}/{benchmark}: no outcomes for the router's model(s) {missing}; "
                             "evaluate on data that covers the router's pool")
        m = sub.matrix(trained.models)
        t0 = time.perf_counter()
        scores = trained.router.predict_scores(m.texts, m.tasks)
        if trained.policy.reads_answers and m.answer_codes is None:
            raise HerdDataError(f"{source}/{benchmark}: the router's policy {label!r} compares recorded answers, "
                             "which this data does not have")
        extra = policy_inputs(trained.policy, m.observed, m.answer_codes, tasks=m.tasks)
        choice = trained.policy.choose(scores, trained.model_costs, **extra)
        called = trained.policy.called(choice, len(m.models))
        ms = 1000.0 * (time.perf_counter() - t0) / m.n_queries
        sweeps = {name: np.stack([CostAware(w).choose(scores, trained.model_costs) for w in COST_WEIGHTS])} if sweep else {}
        seen = len(query_keys(m) & trained.train_keys)
        notes = [f"router trained by `herd train` on {', '.join(trained.manifest['training_data']['groups'])} "
                 f"({trained.manifest['training_data']['n_queries']} queries); best single = its training data's best"]
        if seen:
            notes.append(f"WARNING: {seen} of these {m.n_queries} queries were in the router's training data; "
                         "its figures here are optimistic")
        best_choice = np.full(m.n_queries, m.models.index(best_name))
        results.append(summarize(m, best_choice, [best_name], [Routed(name, f"{name} ({label})", choice, ms, called)],
                                 sweeps, {name: scores}, notes))
    return Evaluation(data.origin, 0, -1, label, results, embedding_engine=trained.manifest.get("embedding_engine"))


@dataclass
class Routed:
    """One router + policy's out-of-sample choices on a benchmark."""

    router: str
    method: str
    choice: np.ndarray
    router_ms: float | None = None
    called: np.ndarray | None = None  # (n, k) bool: every model called per query, when more than the choice
    kind: str = "router"
    latency: np.ndarray | None = None  # per query, when calls ran at once (not the sum of the calls)
    accepted: np.ndarray | None = None  # per query: answered by an agreement cascade's first stage


def summarize(m: Matrix, best_choice: np.ndarray, best_by_fold: list[str], routed: list[Routed],
              sweeps: dict[str, np.ndarray], scores: dict[str, np.ndarray], notes: list[str],
              task_best: np.ndarray | None = None) -> BenchmarkResult:
    """Every baseline and every routed method's figures on ``m``, where ``best_choice`` is the
    best single model as chosen on training data, per query, and ``task_best`` the best model
    of each query's task, chosen on training data (where tasks are known)."""
    source, benchmark = group_name(m)
    y, cost, lat = m.labels, m.cost, m.latency
    n, k = y.shape
    notes = list(notes)
    choices: dict[str, np.ndarray] = {}  # method -> choice, for the per-task figures of a mixture
    best_name = Counter(best_by_fold).most_common(1)[0][0]
    best_acc = metrics.accuracy(metrics.picked(y, best_choice))
    oracle_acc = metrics.oracle_accuracy(y)

    def row(method, kind, choice=None, acc=None, cost_value=None, coverage=1.0, estimated=None, latency=None,
            called=None, per_query_latency=None, **extra):
        if choice is not None:
            choices[method] = choice
            acc = metrics.accuracy(metrics.picked(y, choice))
            spent = metrics.picked if called is None else (lambda v, _: metrics.summed(v, called))
            cost_value, coverage = metrics.mean_known(spent(cost, choice))
            latency = metrics.mean_known(spent(lat, choice) if per_query_latency is None else per_query_latency)[0]
            used = np.unique(choice) if called is None else np.flatnonzero(called.any(axis=0))
            estimated = bool(m.cost_estimated[used].any())
        gap = None if kind == "oracle" else metrics.gap_closed(acc, best_acc, oracle_acc)
        if m.owned is not None and "ownership" not in extra:
            extra["ownership"] = float(m.owned[choice].mean()) if choice is not None else float(m.owned.mean())
        return MethodResult(
            source, benchmark, method, kind, acc, cost_value, bool(estimated), latency, n, gap, best_name,
            cost_coverage=coverage, **extra,
        )

    rows = [row("oracle", "oracle", choice=metrics.oracle_choice(y, cost))]
    rows[0].accuracy = oracle_acc  # fractional scores: the best score, not the cheapest's
    r_acc, r_cost = metrics.random_expected(y, cost)
    priced = ~np.isnan(cost).all(axis=0)
    rows.append(row("random", "random", acc=r_acc, cost_value=r_cost, coverage=float(priced.mean()),
                    estimated=bool(m.cost_estimated.any()), latency=_mean_or_none(lat)))
    best_row = row(f"best single (train): {best_name}", "best-single", choice=best_choice)
    rows.append(best_row)
    on_test = metrics.best_model(y, cost)
    rows.append(row(f"best on test: {m.models[on_test]}", "best-on-test", choice=np.full(n, on_test)))
    if task_best is not None:
        rows.append(row("best per task (train)", "task-best", choice=task_best))
    for r in routed:
        if r.kind == "vote":
            rows.append(row(r.method, "vote", choice=r.choice, called=r.called, per_query_latency=r.latency))

    single_costs = metrics.mean_cost_per_model(cost)
    priced_idx = np.flatnonzero(~np.isnan(single_costs))
    cost_range = None
    single_aiq = None
    if len(priced_idx) >= 2:
        sc = single_costs[priced_idx]
        sa = y[:, priced_idx].mean(axis=0)
        cost_range = (float(sc.min()), float(sc.max()))
        single_aiq = metrics.aiq(sc, sa, cost_range)

    # One cost-quality curve per router: the cost-aware sweep does not depend on the policy.
    curves, curve_stats = {}, {}
    best_priced = best_row.cost_usd is not None and best_row.cost_coverage >= 0.9
    if cost_range is not None:
        for name, ch in sweeps.items():
            pts = [(metrics.mean_known(metrics.picked(cost, c))[0], metrics.accuracy(metrics.picked(y, c))) for c in ch]
            curves[name] = pts
            pc, pa = np.array([q[0] for q in pts]), np.array([q[1] for q in pts])
            # No "cost to match" against a best single model whose own cost is unknown.
            match = metrics.cost_to_match(pc, pa, best_acc) if best_priced else None
            curve_stats[name] = {"aiq": metrics.aiq(pc, pa, cost_range), "cost_to_match_best_single": match}
    if k == 2:
        strong = m.models.index(best_name)
        for name, sc in scores.items():
            pref = sc[:, strong] - sc[:, 1 - strong]
            share, pgr = metrics.pgr_curve(pref, y[:, strong], y[:, 1 - strong])
            curve_stats.setdefault(name, {}).update(
                apgr=metrics.apgr(share, pgr), cpt50=metrics.cpt(share, pgr, 0.5), cpt80=metrics.cpt(share, pgr, 0.8))
    for r in routed:
        if r.kind != "vote":
            extra = {} if r.accepted is None else {"accepted": float(r.accepted.mean())}
            rows.append(row(r.method, r.kind, choice=r.choice, router_ms=r.router_ms, called=r.called,
                            per_query_latency=r.latency, **extra, **curve_stats.get(r.router, {})))
    mixture = benchmark == "mix" and m.tasks is not None
    if mixture:
        for r in routed:
            if r.kind == "router" and r.called is None:
                acc, spent = metrics.shuffled_expected(y, cost, r.choice)
                rows.append(row(f"{r.method}, shuffled", "random-control", acc=acc, cost_value=spent,
                                estimated=bool(m.cost_estimated.any())))
    for j in range(k):
        rows.append(row(m.models[j], "single", choice=np.full(n, j)))
    tasks, per_task, shares = {}, {}, {}
    if mixture:
        tasks = {str(t): int(c) for t, c in zip(*np.unique(m.tasks.astype(str), return_counts=True))}
        routed_methods = {r.method for r in routed if r.kind == "router"}
        for method, choice in choices.items():
            per_task[method] = {t: metrics.accuracy(metrics.picked(y[m.tasks == t], choice[m.tasks == t]))
                                for t in tasks}
            if method in routed_methods:
                shares[method] = {t: {m.models[j]: float(np.mean(choice[m.tasks == t] == j))
                                      for j in np.unique(choice[m.tasks == t])} for t in tasks}

    return BenchmarkResult(
        source=source,
        benchmark=benchmark,
        n_queries=n,
        models=list(m.models),
        rows=rows,
        unpriced_models=[m.models[j] for j in range(k) if np.isnan(single_costs[j])],
        estimated_cost_models=[m.models[j] for j in range(k) if m.cost_estimated[j]],
        best_single_by_fold=best_by_fold,
        curves=curves,
        single_aiq=single_aiq,
        cost_range=cost_range,
        notes=notes,
        tasks=tasks,
        per_task=per_task,
        task_shares=shares,
        fingerprint=m.fingerprint(),
    )




def _mean_or_none(a: np.ndarray) -> float | None:
    return metrics.mean_known(a.ravel())[0]


def _tagged(progress: Progress | None, message: str):
    if progress is None:
        return None
    return lambda done, total: progress(message, done, total)
