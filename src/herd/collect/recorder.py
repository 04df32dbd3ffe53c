"""Recording a collection: every finished call is appended to a write-ahead log (``calls.jsonl``)
as it finishes, so a run killed at any moment loses at most the calls in flight. Rerunning the
same command skips what is recorded. ``compact`` turns the log into the unified outcome format.

A call's key is (config, model, question, sample). The config hash covers everything that
changes an answer: task, grader, prompt templates and examples, sampling, the model's backend
id and prompt style. Rows recorded under another config are never mixed in: they stay in the
log, unused, and the run says how many it set aside.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herd import __version__
from herd.collect.grading import get_grader, majority
from herd.collect.tasks import Task
from herd.pool import ModelConfig

LOG = "calls.jsonl"
SOURCE = "collected"


class RunLocked(RuntimeError):
    """Another process is recording into the same directory."""


def config_key(run_config: dict, model: ModelConfig) -> str:
    spec = {**run_config, "model": model.name, "backend_model": model.backend_model, "prompt_style": model.prompt_style}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Recorder:
    out: Path
    keys: dict[str, str]  # model name -> config key

    def __post_init__(self):
        self.out.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.out / ".lock", "w")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLocked(f"{self.out}: another `herd collect` is recording here; wait for it or use another -o") from None
        self.path = self.out / LOG
        self._repair_tail()
        self.rows = self._read()
        self._file = open(self.path, "a", encoding="utf-8")

    def _repair_tail(self) -> None:
        """A process killed mid-write leaves a partial last line: cut it so appends start clean."""
        if not self.path.exists():
            return
        with open(self.path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        rows = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn line from a crash; the call is simply made again
        return rows

    def done(self) -> set[tuple[str, str, int]]:
        """(model, qid, sample) of calls recorded as answered under the current configs."""
        return {(r["model"], r["qid"], r["sample"]) for r in self.rows
                if r.get("ok") and self.keys.get(r["model"]) == r.get("key")}

    def set_aside(self) -> dict[str, int]:
        """Answered calls recorded under another config, per model (never used)."""
        counts: dict[str, int] = defaultdict(int)
        for r in self.rows:
            if r.get("ok") and r["model"] in self.keys and r.get("key") != self.keys[r["model"]]:
                counts[r["model"]] += 1
        return dict(counts)

    def append(self, record: dict) -> None:
        record = {"key": self.keys[record["model"]], "time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()  # in the OS's hands now: a killed process loses nothing written
        self.rows.append(record)

    def close(self) -> None:
        self._file.close()
        self._lock.close()


def write_run_info(out: Path, run_config: dict, keys: dict[str, str]) -> None:
    info = {"herd_version": __version__, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": run_config, "config_keys": keys}
    (out / "run.json").write_text(json.dumps(info, indent=2))


def compact(rec: Recorder, task: Task, models: list[ModelConfig], samples: int) -> dict[str, int]:
    """Write ``outcomes.parquet``, ``queries.parquet`` and ``models.csv`` from the answered calls of
    the current configs. With k samples, ``correct`` is maj@k (the majority answer equals the
    gold one, as SelectLLM labels) and ``share_correct`` is the share of samples right. A
    question whose calls all failed has no row: a failure is not a wrong answer."""
    grader = get_grader(task.grader)
    gold = {i.id: i.answer for i in task.items}
    calls: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rec.rows:
        if r.get("ok") and rec.keys.get(r["model"]) == r.get("key") and r["qid"] in gold and r["sample"] < samples:
            calls[(r["model"], r["qid"])].append(r)
    rows = []
    for (model, qid), rs in calls.items():
        rs = list({r["sample"]: r for r in rs}.values())  # one per sample, whatever the log holds
        answer = majority([r["answer"] for r in rs], grader.correct) if samples > 1 else rs[0]["answer"]
        rows.append({
            "source": SOURCE, "benchmark": task.benchmark, "qid": qid, "model": model,
            "correct": float(grader.correct(answer, gold[qid])),
            "share_correct": float(np.mean([r["correct"] for r in rs])),
            "samples": len(rs), "answer": answer,
            "cost_usd": _mean([r.get("cost_usd") for r in rs]),
            "latency_s": _mean([r.get("latency_s") for r in rs]),
            "output_tokens": _mean([r.get("completion_tokens") for r in rs]),
            "output_chars": float(np.mean([len(r.get("text") or "") for r in rs])),
        })
    outcomes = pd.DataFrame(rows, columns=["source", "benchmark", "qid", "model", "correct", "share_correct", "samples",
                                           "answer", "cost_usd", "latency_s", "output_tokens", "output_chars"])
    outcomes = outcomes.sort_values(["model", "qid"]).reset_index(drop=True)
    outcomes["correct"] = outcomes["correct"].astype("float32")
    for col in ("output_tokens", "output_chars"):
        outcomes[col] = outcomes[col].round().astype("Int32")
    asked = sorted(set(outcomes["qid"]))
    by_id = {i.id: i for i in task.items}
    queries = pd.DataFrame([{"source": SOURCE, "benchmark": task.benchmark, "qid": q, "text": by_id[q].question,
                             "gold": by_id[q].answer} for q in asked], columns=["source", "benchmark", "qid", "text", "gold"])
    pool = pd.DataFrame([{"model": m.name, "source": SOURCE, "params_b": None, "open_weights": "open" in m.tags or None,
                          "price_in_per_mtok": m.price_in_per_mtok, "price_out_per_mtok": m.price_out_per_mtok,
                          "price_note": "pool file" if m.price_in_per_mtok is not None else None,
                          "context_window": m.context_window} for m in models])
    _atomic(rec.out / "outcomes.parquet", lambda p: outcomes.to_parquet(p, index=False))
    _atomic(rec.out / "queries.parquet", lambda p: queries.to_parquet(p, index=False))
    _atomic(rec.out / "models.csv", lambda p: pool.to_csv(p, index=False))
    return {"outcomes": len(outcomes), "queries": len(queries)}


def _mean(values) -> float | None:
    known = [v for v in values if isinstance(v, (int, float))]
    return float(np.mean(known)) if known else None


def _atomic(path: Path, write) -> None:
    """Write to a temporary name, then rename: a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
