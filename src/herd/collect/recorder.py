"""Recording a collection: every finished call is appended to a write-ahead log (``calls.jsonl``)
as it finishes, so a run killed at any moment loses at most the calls in flight. Rerunning the
same command skips what is recorded. ``compact`` turns the log into the unified outcome format.

A call is (model, question, sample) plus a key: the hash of exactly what is sent (the backend
model id, the endpoint, the prompt or messages, the sampling settings). A recorded answer
counts only while its key is the one the current settings would send, so changed prompts,
examples, questions or sampling never mix with earlier answers: those stay in the log, unused,
and the run says how many it set aside. Grading is redone from the recorded text at every
compaction, so a changed grader or gold answer needs no new calls.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herd import __version__
from herd.collect.grading import agreement, get_grader, majority
from herd.collect.tasks import Task
from herd.data import Outcomes
from herd.errors import HerdError
from herd.pool import ModelConfig

LOG = "calls.jsonl"
SOURCE = "collected"
Call = tuple[str, str, int]  # (model, qid, sample)


def call_key(model: ModelConfig, path: str, body: dict) -> str:
    """What makes an answer: the backend model id, the endpoint and the body (without the seed,
    which the sample number already pins)."""
    spec = {"backend_model": model.backend_model, "path": path, **{k: v for k, v in body.items() if k != "seed"}}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


class RunLocked(HerdError, RuntimeError):
    """Another process is recording into the same directory."""


def config_key(run_config: dict, model: ModelConfig) -> str:
    spec = {**run_config, "model": model.name, "backend_model": model.backend_model, "prompt_style": model.prompt_style}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Recorder:
    out: Path

    def __post_init__(self):
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.out / ".lock", "w")
        except OSError as e:
            raise RunLocked(f"{self.out}: cannot record here ({e.strerror or e})") from None
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
        # Bytes that are not UTF-8 (a damaged file) spoil only their line, which is asked again.
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn line from a crash; the call is simply made again
        return rows

    def answered(self, expected: dict[Call, str]) -> dict[Call, dict]:
        """The recorded answer of every expected call made with the expected key (the last one)."""
        found = {}
        for r in self.rows:
            call = (r["model"], r["qid"], r["sample"])
            if r.get("ok") and expected.get(call) == r.get("key"):
                found[call] = r
        return found

    def set_aside(self, expected: dict[Call, str]) -> dict[str, int]:
        """Per model, expected calls answered only under other settings (never used)."""
        current = self.answered(expected)
        other = {(r["model"], r["qid"], r["sample"]) for r in self.rows
                 if r.get("ok") and (r["model"], r["qid"], r["sample"]) in expected}
        counts: dict[str, int] = defaultdict(int)
        for call in other - set(current):
            counts[call[0]] += 1
        return dict(counts)

    def append(self, record: dict) -> None:
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()  # in the OS's hands now: a killed process loses nothing written
        self.rows.append(record)

    def close(self) -> None:
        self._file.close()
        self._lock.close()


def write_run_info(out: Path, run_config: dict) -> None:
    info = {"herd_version": __version__, "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": run_config}
    (out / "run.json").write_text(json.dumps(info, indent=2))


def compact(rec: Recorder, task: Task, models: list[ModelConfig], expected: dict[Call, str], samples: int) -> dict[str, int]:
    """Write ``outcomes.parquet``, ``queries.parquet`` and ``models.csv`` from the answered calls
    that match ``expected``, graded now with the task's grader and gold answers. With k samples,
    ``correct`` is maj@k (the majority answer equals the gold one, as SelectLLM labels),
    ``share_correct`` the share of samples right and ``agreement`` the share that give the
    majority answer. A question whose calls all failed has no row: a failure is not a wrong answer."""
    grader = get_grader(task.grader)
    gold = {i.id: i.answer for i in task.items}
    calls: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for (model, qid, _), r in rec.answered(expected).items():
        calls[(model, qid)].append(r)
    rows = []
    for (model, qid), rs in calls.items():
        answers = [grader.extract(r.get("text") or "") for r in rs]
        right = [grader.correct(a, gold[qid]) for a in answers]
        answer = majority(answers, grader.correct) if samples > 1 else answers[0]
        rows.append({
            "source": SOURCE, "benchmark": task.benchmark, "qid": qid, "model": model,
            "correct": float(grader.correct(answer, gold[qid])), "share_correct": float(np.mean(right)),
            "samples": len(rs), "answer": answer,
            "agreement": agreement(answers, grader.correct) if len(rs) > 1 else None,
            "cost_usd": _mean([r.get("cost_usd") for r in rs]),
            "latency_s": _mean([r.get("latency_s") for r in rs]),
            "output_tokens": _mean([r.get("completion_tokens") for r in rs]),
            "output_chars": float(np.mean([len(r.get("text") or "") for r in rs])),
        })
    outcomes = pd.DataFrame(rows, columns=["source", "benchmark", "qid", "model", "correct", "share_correct", "samples",
                                           "answer", "agreement", "cost_usd", "latency_s", "output_tokens", "output_chars"])
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
    Outcomes(queries, outcomes, pool).save(rec.out)
    return {"outcomes": len(outcomes), "queries": len(queries)}


def _mean(values) -> float | None:
    known = [v for v in values if isinstance(v, (int, float))]
    return float(np.mean(known)) if known else None
