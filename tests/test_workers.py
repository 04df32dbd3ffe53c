"""Worker processes: results in order, errors raised where they are read, the number of workers
from HERD_WORKERS, and evaluations and reports the same bit for bit in one process or in two."""

import json
import operator
import os
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from herd.data import Outcomes
from herd.errors import UsageError
from herd.evaluation import evaluate
from herd.policies import make_policy
from herd.report import write_report
from herd.workers import run_tasks, worker_count


def _fail_on_three(shared, task):
    if task == 3:
        raise UsageError(f"task {task} of {shared} is wrong")
    return task


@pytest.mark.parametrize("workers", [1, 2])
def test_results_come_in_task_order_with_progress_and_the_callers_settings(monkeypatch, workers):
    monkeypatch.setenv("HERD_EMBED_ENGINE", "static")  # set after any worker started: still seen
    seen = []
    out = list(run_tasks(operator.pow, [5, 1, 4, 0, 3], 2, workers=workers, progress=lambda d, t: seen.append((d, t))))
    assert out == [32, 2, 16, 1, 8]
    assert seen[-1] == (5, 5) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert list(run_tasks(os.getenv, [None, "-"], "HERD_EMBED_ENGINE", workers=workers)) == ["static", "static"]
    monkeypatch.delenv("HERD_EMBED_ENGINE")
    assert list(run_tasks(os.getenv, [None], "HERD_EMBED_ENGINE", workers=workers)) == [None]


@pytest.mark.parametrize("workers", [1, 2])
def test_an_error_in_a_task_is_raised_where_its_result_is_read(workers):
    results = run_tasks(_fail_on_three, [1, 2, 3, 4], "the batch", workers=workers)
    assert next(results) == 1 and next(results) == 2
    with pytest.raises(UsageError, match="task 3 of the batch is wrong"):
        next(results)
    assert list(run_tasks(operator.add, [1, 2], 10, workers=workers)) == [11, 12]  # new workers after the error


def test_the_number_of_workers(monkeypatch):
    monkeypatch.delenv("HERD_WORKERS", raising=False)
    assert worker_count() >= 1
    monkeypatch.setenv("HERD_WORKERS", "3")
    assert worker_count() == 3 and worker_count(1) == 1
    for bad in ("two", "0", "-1", "1.5"):
        monkeypatch.setenv("HERD_WORKERS", bad)
        with pytest.raises(UsageError, match="HERD_WORKERS|1 or more"):
            worker_count()


def _two_benchmarks(frames):
    """The toy table, and a smaller second benchmark of its queries with other outcomes (started
    first in workers, reported second), with recorded answers."""
    q, o, m = frames
    q2 = q.iloc[::2].assign(benchmark="other")
    o2 = o[o.qid.isin(q2.qid)].assign(benchmark="other")
    o2["correct"] = np.random.default_rng(1).permutation(o2["correct"].to_numpy())
    q, o = pd.concat([q, q2], ignore_index=True), pd.concat([o, o2], ignore_index=True)
    o["answer"] = np.where(o.correct == 1, "a", np.where(o.model == "big-70b", "b", "c"))
    return Outcomes.from_frames(q, o, m)


def _figures(ev) -> str:
    doc = ev.to_json()
    doc.pop("created")
    for row in doc["results"]:
        row.pop("router_ms")  # a timing
    return json.dumps(doc, sort_keys=True)


def test_two_workers_evaluate_and_draw_exactly_what_one_process_does(frames, tmp_path):
    """Logistic routers on text use liblinear's dual solver, which reads C's process-wide random
    state: fits in worker processes must still equal fits in this one, benchmark after benchmark
    (the workers go on to the second while this process finishes the first)."""
    data = _two_benchmarks(frames)
    policies = [make_policy(p) for p in ("argmax", "safe", "agree")]
    # 3 folds: inner folds of their own; 4: inner fits shared by the folds
    runs = {(w, k): evaluate(data, ["logistic", "knn-tfidf"], policy=policies, folds=k, workers=w) for w in (1, 2)
            for k in (3, 4)}
    assert [b.benchmark for b in runs[2, 3].benchmarks] == ["mix", "other"]
    assert _figures(runs[1, 3]) == _figures(runs[2, 3]) and _figures(runs[1, 4]) == _figures(runs[2, 4])
    one_benchmark = replace(runs[2, 3], benchmarks=runs[2, 3].benchmarks[:1])
    here = write_report(one_benchmark, tmp_path / "here", workers=1)
    there = write_report(one_benchmark, tmp_path / "there", workers=2)
    assert sorted(here) == sorted(there) and sum(p.suffix == ".png" for p in there.values()) == 4
    for name, path in here.items():
        assert path.read_bytes() == there[name].read_bytes(), name
