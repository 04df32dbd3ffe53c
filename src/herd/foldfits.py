"""The routers' fits of a cross-validation, one per (fold, router): each router fitted on the
fold's training queries with its policies tuned inside them (``fit_in_fold``), then scoring the
fold's test queries. Large tables are fitted in worker processes (herd.workers), smaller ones
in this process, where starting workers would take longer than the work; the results are the
same bit for bit either way."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from herd.data import Matrix
from herd.features import Prepared, prepared
from herd.routers import Router
from herd.tuning import fit_in_fold
from herd.workers import run_tasks, worker_count

# Below this many outcomes (queries x models) a table is fitted in this process unless a number
# of workers is given: starting workers takes a second or two.
PARALLEL_MIN_OUTCOMES = 10_000


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
    features: Prepared


def _fit_fold(folds: _Folds, task: tuple[int, str]) -> FoldFit:
    f, name = task
    folds.features.adopt()
    tr, te = folds.splits[f]
    fold = fit_in_fold(folds.routers[name], folds.policies, folds.m.take(tr), folds.seed)
    router, test = fold.router, folds.m.take(te)
    t0 = time.perf_counter()
    scores = router.predict_scores(test.texts, test.tasks)
    seconds = time.perf_counter() - t0
    return FoldFit(scores, seconds, fold.policies, router.embedding_engine(),
                   router.summary() if hasattr(router, "summary") else None)


class FoldFits:
    """Every (fold, router) fit of table ``m``: in worker processes, handed out when this is made
    (``in_workers``), else in this process as they are read. Iterating gives ((fold index,
    router name), FoldFit) in fold order, then router order; ``progress(message, done, total)``
    hears of the fits as they finish, from the start of the iteration on."""

    def __init__(self, m: Matrix, splits, routers: dict[str, Router], policies: list, seed: int, *,
                 workers: int | None = None, label: str = "", progress: Callable[[str, int, int], None] | None = None):
        self.tasks = [(f, name) for f in range(len(splits)) for name in routers]
        if workers is None and m.labels.size < PARALLEL_MIN_OUTCOMES:
            workers = 1
        workers = worker_count(workers)
        self.in_workers = workers > 1 and bool(self.tasks)
        message = (f"{label}: fitting {len(splits)} folds x {len(routers)} router(s)"
                   + (f" in {min(workers, len(self.tasks))} worker processes" if self.in_workers else ""))
        self._report = progress and (lambda done, total: progress(message, done, total))
        self._fits = run_tasks(_fit_fold, self.tasks, _Folds(m, splits, routers, policies, seed, prepared(m.texts)),
                               workers=workers, progress=self._report) if self.tasks else iter(())

    def __iter__(self) -> Iterator[tuple[tuple[int, str], FoldFit]]:
        if self._report and self.tasks:
            self._report(0, len(self.tasks))  # those done by now are counted as soon as the first is read
        # The fits first: zip stops at the first that ends, and the fits must end (not be left
        # at their last result) for their shared file to go at once.
        return ((task, fit) for fit, task in zip(self._fits, self.tasks))
