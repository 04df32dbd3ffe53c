"""Hand-made gateway logs in the choice-log and feedback-log formats, from a simulated logging
policy whose per-model reward rates are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

TOPICS = {
    "math": ["add the numbers", "solve for x in the equation", "compute the integral", "what is the sum of"],
    "history": ["which emperor ruled rome", "when did the war end", "who signed the treaty", "the ancient dynasty"],
    "code": ["write a python function", "what does this loop print", "fix the bug in the code", "return the list"],
}
MODELS = ["math-7b", "hist-7b", "big-70b"]
# P(right) per topic and model: each small model is strong on its topic, the big one fair on all.
RATES = {"math": (0.9, 0.1, 0.5), "history": (0.1, 0.9, 0.5), "code": (0.1, 0.1, 0.8)}
COSTS = (0.001, 0.001, 0.01)


def record(rid: str, query: str | None, chosen: str, model: str | None = None, *, propensity: float = 1.0,
           allowed=None, explored: bool = False, status: str = "200", cascade=None, agree=None,
           cost: float | None = 0.001, policy: str = "argmax") -> dict:
    """A choice record as the gateway writes it: ``cascade`` a checked cascade's steps
    ([{"model", "accepted"}]), ``agree`` an agreement cascade's {"asked", "answered",
    "agreed"} (a key only agreement cascades write)."""
    r = {"time": 1.0, "request_id": rid, "turn": 1, "key": "-", "route": "herd", "policy": policy,
         "chosen": chosen, "model": model or chosen, "reason": "r", "fallback": [], "calls": 1, "status": status,
         "cost_usd": cost, "ms": 12.5, "cascade": cascade, "session": "abc", "propensity": propensity,
         "allowed": allowed or list(MODELS), "explored": explored}
    if agree is not None:
        r["agree"] = agree
    if query is not None:
        r["query"] = query
    return r


def feedback(rid: str, score: float, label=None) -> dict:
    return {"time": 2.0, "request_id": rid, "score": score, "label": label, "comment": None, "key": "-"}


def write_lines(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def simulate(n: int, eps: float, prefer, seed: int = 0, allowed=None):
    """A logging policy that picks ``prefer(topic)`` (a model index), and with probability ``eps``
    a model drawn uniformly from the allowed ones instead (eps=1: uniform random); ``allowed(topic,
    i)`` names request i's allowed models (default all three; they must hold the preferred one).
    Returns (choice records, feedback records, topics): every request gets feedback, a 0/1 draw
    at RATES."""
    rng = np.random.default_rng(seed)
    choices, fb, topics = [], [], []
    names = list(TOPICS)
    for i in range(n):
        topic = names[rng.integers(len(names))]
        phrase = TOPICS[topic][rng.integers(4)]
        text = f"{phrase} {topic} question {i} {rng.integers(10_000)}"
        own = prefer(topic)
        ok = [MODELS.index(m) for m in (allowed(topic, i) if allowed else MODELS)]
        k = len(ok)
        explored = bool(rng.random() < eps)
        a = ok[int(rng.integers(k))] if explored else own
        p = (1 - eps) + eps / k if a == own else eps / k
        rid = f"req-{i:05d}"
        choices.append(record(rid, text, MODELS[a], propensity=p, explored=explored and a != own,
                              allowed=[MODELS[j] for j in ok], cost=COSTS[a], policy=f"explore:{eps:g}"))
        fb.append(feedback(rid, float(rng.random() < RATES[topic][a])))
        topics.append(topic)
    return choices, fb, topics


def true_value(topics, picks) -> tuple[float, float]:
    """The expected mean score and cost of picking model index ``picks[i]`` on query i."""
    return (float(np.mean([RATES[t][a] for t, a in zip(topics, picks)])),
            float(np.mean([COSTS[a] for a in picks])))
