"""The routers' fits of a cross-validation, one per (fold, router): each router fitted on the
fold's training queries, scoring the fold's test queries, with its policies tuned on held-out
scores of the training queries alone. Large tables are fitted in worker processes
(herd.workers), smaller ones in this process, where starting workers would take longer than the
work; the results are the same bit for bit either way.

With 4 to 7 folds, the held-out scores come from fits the folds share: for fold f the inner
folds are the other outer folds, and the router fitted without folds f and j scores fold j for
f's tuning and fold f for j's. That is K(K-1)/2 inner fits for K folds instead of three for
every fold, each on at least as much of the data, and none of them has seen the queries its
fold is judged on. With other fold counts each fold has its own three inner folds, as ``herd train`` does."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Callable, Iterator

import numpy as np
from sklearn.base import clone

from herd.data import Matrix
from herd.features import Prepared, prepared
from herd.routers import Router
from herd.tuning import needs_validation, tune_policies, validation_scores
from herd.workers import run_tasks, worker_count

# Below this many outcomes (queries x models) a table is fitted in this process unless a number
# of workers is given: starting workers takes a second or two.
PARALLEL_MIN_OUTCOMES = 10_000

# Fold counts whose inner cross-validations share their fits: no more fits than three inner
# folds per fold would take (K(K-1)/2 <= 3K), each on at least as much of the data.
SHARED_INNER_FOLDS = range(4, 8)


@dataclass
class FoldFit:
    """One router fitted on one training fold: its scores of the fold's test queries and the
    seconds they took, the policies tuned in the fold, the sentence encoder engine it read and
    its own summary (auto's choice), if any."""

    scores: np.ndarray
    seconds: float
    policies: list
    engine: str | None
    summary: str | None


@dataclass
class _Folds:
    """What every fit reads, sent to the workers once: the table, its folds, the routers and
    policies, and the features this process prepared for the table's texts."""

    m: Matrix
    splits: list[tuple[np.ndarray, np.ndarray]]
    routers: dict[str, Router]
    policies: list
    seed: int
    sharing: frozenset[str]  # the routers whose inner fits the folds share
    features: Prepared


def _fit(folds: _Folds, task: tuple[str, int | tuple[int, int], str]):
    """A fold's fit (``("fold", f, router)``) or a shared inner fit (``("pair", (i, j), router)``)."""
    kind, which, name = task
    folds.features.adopt()
    return (_fit_pair if kind == "pair" else _fit_fold)(folds, which, name)


def _fit_pair(folds: _Folds, pair: tuple[int, int], name: str) -> list[np.ndarray]:
    """The router fitted without folds i and j: its scores of fold i and of fold j."""
    m = folds.m
    held = [folds.splits[f][1] for f in pair]
    router = clone(folds.routers[name]).fit(m.take(np.setdiff1d(np.arange(m.n_queries), np.concatenate(held))))
    return [router.predict_scores(part.texts, part.tasks) for part in map(m.take, held)]


def _fit_fold(folds: _Folds, f: int, name: str) -> tuple[FoldFit, np.ndarray | None]:
    """The router fitted on fold f's training queries, scoring its test queries (a FoldFit with
    its policies still to tune), and the held-out scores of the training queries where the router
    made them or its folds share no inner fits."""
    proto = folds.routers[name]
    tr, te = folds.splits[f]
    train, test = folds.m.take(tr), folds.m.take(te)
    router = clone(proto).fit(train)
    t0 = time.perf_counter()
    scores = router.predict_scores(test.texts, test.tasks)
    seconds = time.perf_counter() - t0
    validation = getattr(router, "validation_scores_", None)
    if validation is None and name not in folds.sharing and needs_validation(folds.policies):
        validation = validation_scores(router, proto, train, folds.seed)
    return FoldFit(scores, seconds, [], router.embedding_engine(),
                   router.summary() if hasattr(router, "summary") else None), validation


def _partition(splits, n: int) -> bool:
    """Whether the test folds split the n queries between them and each fold trains on the rest:
    the shared inner fits train on whatever two folds leave."""
    tests = np.concatenate([te for _, te in splits])
    return len(tests) == n and np.array_equal(np.sort(tests), np.arange(n)) and all(
        len(tr) + len(te) == n and not np.isin(tr, te).any() for tr, te in splits)


def _shares_inner_fits(router: Router) -> bool:
    # Routers that choose among candidates by their own inner CV (auto) keep its scores.
    return not getattr(router, "keeps_validation_scores", False)


def _fold_of(task) -> int:
    """The fold whose tuning waits for this task: a fold's fit, or the first of a pair."""
    kind, which, _ = task
    return which if kind == "fold" else which[0]


class FoldFits:
    """Every (fold, router) fit of table ``m``: in worker processes, handed out when this is made
    (``in_workers``), else in this process as they are read. Iterating gives ((fold index,
    router name), FoldFit) in fold order, then router order; ``progress(message, done, total)``
    hears of the fits as they finish, from the start of the iteration on."""

    def __init__(self, m: Matrix, splits, routers: dict[str, Router], policies: list, seed: int, *,
                 workers: int | None = None, label: str = "", progress: Callable[[str, int, int], None] | None = None):
        self.m, self.splits, self.policies = m, splits, policies
        shared = len(splits) in SHARED_INNER_FOLDS and needs_validation(policies) and _partition(splits, m.n_queries)
        self.sharing = frozenset(name for name, router in routers.items() if shared and _shares_inner_fits(router))
        # A fold's fit, then the shared inner fits it is the first of: the tuning of fold f can
        # start once f's are in.
        self.tasks = [task for f in range(len(splits)) for name in routers
                      for task in [("fold", f, name)] + [("pair", (f, j), name) for j in range(f + 1, len(splits))
                                                         if name in self.sharing]]
        if workers is None and m.labels.size < PARALLEL_MIN_OUTCOMES:
            workers = 1
        workers = worker_count(workers)
        self.in_workers = workers > 1 and bool(self.tasks)
        inner = sum(kind == "pair" for kind, _, _ in self.tasks)
        message = (f"{label}: fitting {len(splits)} folds x {len(routers)} router(s)"
                   + (f" and {inner} inner fits they share" if inner else "")
                   + (f" in {min(workers, len(self.tasks))} worker processes" if self.in_workers else ""))
        self._report = progress and (lambda done, total: progress(message, done, total))
        sent = _Folds(m, splits, routers, policies, seed, self.sharing, prepared(m.texts))
        self._fits = run_tasks(_fit, self.tasks, sent, workers=workers,
                               progress=self._report) if self.tasks else iter(())

    def __iter__(self) -> Iterator[tuple[tuple[int, str], FoldFit]]:
        if self._report and self.tasks:
            self._report(0, len(self.tasks))  # those done by now are counted as soon as the first is read
        return self._fold_fits()

    def _fold_fits(self) -> Iterator[tuple[tuple[int, str], FoldFit]]:
        pairs: dict[tuple[tuple[int, int], str], list[np.ndarray]] = {}
        # The fits first: zip stops at the first that ends, and the fits must end (not be left
        # at their last result) for their shared file to go at once.
        done = zip(self._fits, self.tasks)
        for (f, name), group in groupby(done, key=lambda d: (_fold_of(d[1]), d[1][2])):
            for got, (kind, which, _) in group:
                if kind == "pair":
                    pairs[which, name] = got
                else:
                    fitted, validation = got
            yield (f, name), self._tuned(f, name, fitted, validation, pairs)

    def _tuned(self, f: int, name: str, fitted: FoldFit, validation: np.ndarray | None, pairs) -> FoldFit:
        if validation is None and name in self.sharing:
            full = np.empty(self.m.labels.shape)
            for j, (_, held) in enumerate(self.splits):
                if j != f:
                    full[held] = pairs[(min(f, j), max(f, j)), name][int(j > f)]
            validation = full[self.splits[f][0]]
        return replace(fitted, policies=tune_policies(None, self.policies, self.m.take(self.splits[f][0]),
                                                     validation).policies)
