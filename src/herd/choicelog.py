"""Live traffic as outcome data: the gateway's choice log (``herd serve --choice-log``) joined
with its feedback log (``--feedback-log``) on the request id.

A choice record is a clean single-action sample only when the model the policy picked
(``chosen``) answered (``model``), on its own (no checked or agreement cascade) and with
status 200: only then is the feedback score the reward of the action whose ``propensity``
was logged. Everything else is skipped and counted, with the reason.

The result is herd's unified format: one query per answered request (qid = request id, text =
the logged ``query``), one outcome row for the model that answered (correct = the feedback
score, cost_usd, propensity) plus ``allowed`` (the policy's action set, a JSON list),
``explored`` and ``logging_policy``, which off-policy evaluation reads.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from herd.data import QUERY_KEY, HerdDataError, Matrix, Outcomes
from herd.errors import UsageError
from herd.jsonl import read_text

SOURCE = "live"
BENCHMARK = "feedback"
# Lines quoted per kind of problem; the rest are counted.
SHOWN = 5

# Skip reasons in the order they are checked, with what the console says of them.
REASONS = {
    "status": "not answered (status other than 200)",
    "cascade": "answered by a checked cascade (answers read before one stood: several calls, not one action)",
    "agree": "answered by an agreement cascade (several models asked together, not one action)",
    "fallback": "answered by a fallback model, not the one the policy picked",
    "duplicate": "repeated request id in the choice log (the first is kept)",
    "no_feedback": "no feedback for the request",
    "no_query": "no query text logged (start `herd serve` with --log-prompts, or set log_prompts in the "
                "pool's gateway section; private requests are never logged)",
}


@dataclass
class JoinReport:
    """What the join kept and what it left out, and why."""

    kept: int = 0
    skipped: Counter = field(default_factory=Counter)  # REASONS key -> rows
    malformed: list[str] = field(default_factory=list)  # "file, line n: what is wrong"
    feedback_lines: int = 0
    feedback_duplicates: int = 0
    feedback_unmatched: int = 0  # feedback for a request id the choice log does not hold
    explored: int = 0

    def lines(self) -> list[str]:
        out = [f"kept {self.kept} answered request(s) with feedback"
               + (f" ({self.explored} chosen by exploration)" if self.kept else "")]
        out += [f"skipped {n}: {REASONS[k]}" for k, n in self.skipped.items() if n]
        if self.feedback_duplicates:
            out.append(f"ignored {self.feedback_duplicates} repeated feedback line(s) (the first per request id is kept)")
        if self.feedback_unmatched:
            out.append(f"ignored {self.feedback_unmatched} feedback line(s) for request ids not in the choice log")
        if self.malformed:
            out.append(f"skipped {len(self.malformed)} malformed line(s):")
            out += [f"  {m}" for m in self.malformed[:SHOWN]]
            if len(self.malformed) > SHOWN:
                out.append(f"  ... and {len(self.malformed) - SHOWN} more")
        return out


def _lines(path: Path):
    """(line number, parsed object or None, error) for every non-blank line of a JSONL file."""
    text = read_text(path, HerdDataError, "JSON lines file")
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): JSON strings may hold U+2028
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            yield n, None, f"not valid JSON ({e.msg})"
            continue
        yield n, value, None if isinstance(value, dict) else "not a JSON object"


def _number(value) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _several(r: dict) -> str | None:
    """The REASONS key of a record answered by more than one model's call: the gateway logs a
    checked cascade's steps in ``cascade`` and an agreement cascade's first stage in ``agree``
    (even when it went straight to the strong model: the policy, not a propensity, chose)."""
    return "cascade" if r.get("cascade") is not None else "agree" if r.get("agree") is not None else None


def _choice_problem(r: dict) -> str | None:
    """What makes a choice record unusable, or None."""
    if not isinstance(r.get("request_id"), str) or not r["request_id"]:
        return "no request_id"
    if not isinstance(r.get("status"), (str, int)):
        return "no status"
    if str(r["status"]) != "200" or _several(r):
        return None  # skipped for what it is, whatever else it holds
    for name in ("chosen", "model"):
        if not isinstance(r.get(name), str):
            return f"no {name}"
    p = _number(r.get("propensity"))
    if p is None or not 0 < p <= 1:
        return f"propensity {r.get('propensity')!r} is not a number in (0, 1]"
    allowed = r.get("allowed")
    if not isinstance(allowed, list) or not allowed or not all(isinstance(a, str) for a in allowed):
        return "allowed is not a list of model names"
    if r["chosen"] not in allowed:
        return f"chosen model {r['chosen']!r} is not in allowed {allowed}"
    if not isinstance(r.get("explored"), bool):
        return "explored is not true or false"
    if r.get("cost_usd") is not None and _number(r["cost_usd"]) is None:
        return f"cost_usd {r['cost_usd']!r} is not a number"
    if r.get("query") is not None and not isinstance(r["query"], str):
        return "query is not a string"
    return None


def _feedback_problem(r: dict) -> str | None:
    if not isinstance(r.get("request_id"), str) or not r["request_id"]:
        return "no request_id"
    score = _number(r.get("score"))
    if score is None or not 0 <= score <= 1:
        return f"score {r.get('score')!r} is not a number in [0, 1]"
    return None


def read_feedback(path: Path, report: JoinReport) -> dict[str, float]:
    """request id -> score, the first line per id; malformed lines and repeats are counted."""
    scores: dict[str, float] = {}
    for n, r, problem in _lines(path):
        problem = problem or _feedback_problem(r)
        if problem:
            report.malformed.append(f"{path}, line {n}: {problem}")
            continue
        report.feedback_lines += 1
        if r["request_id"] in scores:
            report.feedback_duplicates += 1
        else:
            scores[r["request_id"]] = float(r["score"])
    return scores


def join(choice_log: str | os.PathLike, feedback: str | os.PathLike, *, source: str = SOURCE,
         benchmark: str = BENCHMARK) -> tuple[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], JoinReport]:
    """The unified tables (queries, outcomes, models) from a choice log and a feedback log, and
    the report of what was kept and skipped. Raises HerdDataError when nothing is left."""
    choice_log, feedback = Path(choice_log), Path(feedback)
    report = JoinReport()
    scores = read_feedback(feedback, report)
    seen: set[str] = set()
    queries, outcomes = [], []
    for n, r, problem in _lines(choice_log):
        problem = problem or _choice_problem(r)
        if problem:
            report.malformed.append(f"{choice_log}, line {n}: {problem}")
            continue
        rid = r["request_id"]
        reason = ("status" if str(r["status"]) != "200" else _several(r) if _several(r)
                  else "fallback" if r["model"] != r["chosen"] else "duplicate" if rid in seen
                  else "no_feedback" if rid not in scores else "no_query" if not r.get("query") else None)
        seen.add(rid)
        if reason:
            report.skipped[reason] += 1
            continue
        report.kept += 1
        report.explored += r["explored"]
        queries.append({"source": source, "benchmark": benchmark, "qid": rid, "text": r["query"]})
        outcomes.append({"source": source, "benchmark": benchmark, "qid": rid, "model": r["model"],
                         "correct": scores[rid], "cost_usd": _number(r.get("cost_usd")),
                         "latency_s": None if _number(r.get("ms")) is None else r["ms"] / 1000.0,
                         "propensity": float(r["propensity"]), "allowed": json.dumps(r["allowed"]),
                         "explored": r["explored"], "logging_policy": str(r.get("policy") or "")})
    report.feedback_unmatched = sum(rid not in seen for rid in scores)
    if not outcomes:
        raise HerdDataError(f"{choice_log} with {feedback}: no answered request has feedback to import; "
                            + "; ".join(report.lines()))
    q = pd.DataFrame(queries)
    o = pd.DataFrame(outcomes).astype({"correct": "float64", "cost_usd": "float64", "latency_s": "float64",
                                       "propensity": "float64", "explored": bool})
    models = o[["model", "source"]].drop_duplicates().reset_index(drop=True)
    return (q, o, models), report


def is_live(data: Outcomes) -> bool:
    """Whether ``data`` is live traffic (a propensity per outcome): one model observed per query,
    so cross-validating it as a full outcome table would count the unobserved as wrong."""
    return "propensity" in data.outcomes and bool(data.outcomes["propensity"].notna().any())


def feedback_weights(m: Matrix, live_rows: np.ndarray, weight: float) -> np.ndarray:
    """(n_queries, n_models) training weights: 1 on every cell of a benchmark row (a missing
    outcome there counts as wrong, as everywhere in herd), and on a live row ``weight`` times
    its inverse propensity on the one observed cell, 0 elsewhere.

    Why inverse propensity: the queries a model answered live are mostly the ones the serving
    policy sent it, its favourites; the explored ones stand for all the others it was not sent.
    Weighing each by 1 / propensity makes a model's live rows stand for all queries. The weights
    are normalised per model to average ``weight``, so ``weight`` says what one live answer
    counts against one benchmark outcome. (Not clipped: propensities come from the policy
    itself, the smallest being EPS / K, so the largest ratio is bounded by the exploration.)"""
    if not weight > 0:
        raise UsageError(f"the weight of the feedback rows must be more than 0; got {weight}")
    live_rows = np.asarray(live_rows, bool)
    w = np.where(live_rows[:, None], 0.0, 1.0) * np.ones(m.correct.shape)
    seen = live_rows[:, None] & ~np.isnan(m.correct)
    p = m.propensity if m.propensity is not None else np.ones(m.correct.shape)
    inverse = np.where(seen, 1.0 / np.nan_to_num(p, nan=1.0), 0.0)
    per_model = inverse.sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    w[seen] = (weight * inverse / np.where(per_model > 0, per_model, 1.0))[seen]
    return w


def with_feedback(bench: Outcomes, live: Outcomes, weight: float) -> tuple[Matrix, np.ndarray, list[str]]:
    """Benchmark outcomes and live feedback as one training Matrix over the benchmark's models,
    with ``feedback_weights``; and notes on what of the feedback was left out."""
    models = bench.model_names()
    o = live.outcomes
    notes = []
    other = sorted(set(o["model"]) - set(models))
    if other:
        notes.append(f"left out {int(o['model'].isin(other).sum())} feedback row(s) of model(s) {other}, which the "
                     "benchmark data does not have")
    o = o[o["model"].isin(models)]
    if o.empty:
        raise HerdDataError(f"{live.origin}: no feedback on the models of {bench.origin} ({', '.join(models)})")
    clash = live.queries.merge(bench.queries[QUERY_KEY], on=QUERY_KEY)
    if len(clash):
        raise HerdDataError(f"{live.origin}: {len(clash)} (source, benchmark, qid) also in {bench.origin}; import the "
                            "feedback with its own --source")
    q = live.queries.merge(o[QUERY_KEY].drop_duplicates(), on=QUERY_KEY)
    mixed = Outcomes(pd.concat([bench.queries, q], ignore_index=True),
                     pd.concat([bench.outcomes, o], ignore_index=True), bench.models, bench.origin)
    m = mixed.matrix(models)
    # Tasks as the benchmark data alone has them (live queries' task unknown): the feedback
    # must not turn a one-benchmark table into a mixture of two.
    tasks = bench.matrix(models).tasks
    m = replace(m, tasks=None if tasks is None else np.r_[tasks, np.full(len(q), None, dtype=object)])
    return m, feedback_weights(m, np.arange(m.n_queries) >= len(bench.queries), weight), notes
