"""One collection from start to end, for the CLI and for Python alike: ``plan_task`` loads the
pool and the task, plans every call and opens the run directory (saying what is already recorded
and what is set aside); ``Plan.run`` asks what is missing, then writes the outcome tables from
everything recorded, also when interrupted; ``Collected`` holds the tallies and a summary per model.

    plan = plan_task("pool.yaml", "gsm8k", "runs/gsm8k", limit=50)
    collected = plan.run()
    collected.summary()
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd

from herd.collect import recorder
from herd.collect.prompts import Prompts
from herd.collect.runner import ModelTally, Sampling, plan_calls, run
from herd.collect.tasks import Task, load_task
from herd.pool import ModelConfig, PoolConfig, PoolError, load_pool


@dataclass
class Collected:
    """What a run did: outcome and question counts written, each asked model's tally, and
    whether it was interrupted (what finished is recorded and written)."""

    out: Path
    models: list[str]
    samples: int
    outcomes: int
    queries: int
    tallies: dict[str, ModelTally]
    interrupted: bool
    seconds: float

    def summary(self) -> list[dict]:
        """Per asked model, from the written tables: questions answered, accuracy (maj@k and the
        share of samples right with several samples), mean latency, output tokens and cost per
        query (None where unknown), and failed calls with their kinds."""
        table = pd.read_parquet(self.out / "outcomes.parquet")
        rows = []
        for name in self.models:
            o = table[table["model"] == name]
            tally = self.tallies.get(name, ModelTally())

            def mean(col):
                return float(o[col].mean()) if len(o) and o[col].notna().any() else None

            rows.append({"model": name, "questions": len(o), "correct": mean("correct"),
                         "share_correct": mean("share_correct") if self.samples > 1 else None,
                         "latency_s": mean("latency_s"), "output_tokens": mean("output_tokens"),
                         "cost_usd": mean("cost_usd"), "failed": tally.failed, "errors": dict(tally.errors)})
        return rows


@dataclass
class Plan:
    """Every call of a task to a pool, the calls already answered under the same settings, and
    those answered under other settings (set aside per model, never mixed in)."""

    task: Task
    pool: PoolConfig
    asked: list[ModelConfig]
    sampling: Sampling
    calls: dict
    expected: dict
    todo: dict
    set_aside: dict[str, int]
    recorder: recorder.Recorder
    mine: int = 0  # the asked models' calls, recorded or not

    @property
    def recorded(self) -> int:
        return self.mine - len(self.todo)

    def todo_per_model(self) -> dict[str, int]:
        return {m.name: sum(c[0] == m.name for c in self.todo) for m in self.asked}

    def run(self, on_call: Callable[[str, ModelTally], None] | None = None) -> Collected:
        """Ask the calls still to do (``on_call(model, tally)`` after each), then write the
        outcome tables from every recorded answer of the pool and close the run. Ctrl-C stops
        the asking; what finished is still written."""
        started = time.perf_counter()
        tallies, interrupted = {}, False
        try:
            tallies = asyncio.run(run(self.todo, self.asked, self.pool.gateway, self.sampling, self.recorder,
                                      on_call or (lambda name, tally: None)))
        except KeyboardInterrupt:
            interrupted = True
        # The whole pool's answers, so the tables cover every model asked so far, not only these.
        counts = recorder.compact(self.recorder, self.task, list(self.pool.models), self.expected,
                                  self.sampling.samples)
        self.recorder.close()
        return Collected(self.recorder.out, [m.name for m in self.asked], self.sampling.samples, counts["outcomes"],
                         counts["queries"], tallies, interrupted, time.perf_counter() - started)


def plan_task(pool: str | Path | PoolConfig, task: str, out: str | Path, *, models: list[str] | None = None,
              split: str = "test", limit: int | None = None, offset: int = 0, samples: int = 1,
              grader: str | None = None, shots: int = 5, templates: str | None = None,
              temperature: float | None = None, max_tokens: int = 512, max_retries: int = 5, seed: int = 0,
              data_dir: str | Path | None = None) -> Plan:
    """Load the pool (a file or a loaded config) and the task, plan the calls of every pool
    model (``models``: ask only these), lock ``out`` for this run and write its ``run.json``.
    Raises PoolError, TaskError or RunLocked (all HerdErrors) on what the user gave."""
    config = load_pool(pool)[0] if not isinstance(pool, PoolConfig) else pool
    unknown = sorted(set(models or []) - set(config.names))
    if unknown:
        raise PoolError(f"--models {unknown} not in the pool {config.names}")
    asked = [m for m in config.models if models is None or m.name in models]
    the_task = load_task(task, data_dir=Path(data_dir) if data_dir else None, split=split, limit=limit,
                         offset=offset, grader=grader)
    prompts = Prompts.load(templates, shots=shots, seed=seed)
    sampling = Sampling(samples, temperature, max_tokens, max_retries)
    # The whole pool's calls, so the tables cover every model asked so far, not only `models`.
    calls = plan_calls(the_task, list(config.models), prompts, sampling)
    expected = {call: key for call, (_, _, key) in calls.items()}
    rec = recorder.Recorder(Path(out))
    recorder.write_run_info(Path(out), {"task": the_task.name, "split": split, "grader": the_task.grader,
                                        "questions": len(the_task.items), "samples": samples,
                                        "prompts": prompts.fingerprint(), **sampling.describe(),
                                        "models": [m.name for m in config.models]})
    aside = rec.set_aside(expected)
    answered = rec.answered(expected)
    names = {m.name for m in asked}
    mine = {c: v for c, v in calls.items() if c[0] in names}
    todo = {c: v for c, v in mine.items() if c not in answered}
    return Plan(the_task, config, asked, sampling, calls, expected, todo, aside, rec, len(mine))


def run_task(pool, task: str, out, *, on_call=None, **options) -> Collected:
    """``plan_task`` then ``Plan.run``: collect ``task`` from ``pool`` into ``out``."""
    return plan_task(pool, task, out, **options).run(on_call)
