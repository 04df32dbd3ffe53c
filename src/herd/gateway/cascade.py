"""A checked cascade's steps in the gateway: the samples to draw from a model, how its replies
are judged (extracted answers, their agreement and length, the policy's P(right)), the checked
models asked in turn, and an accepted reply sent as a stream."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from herd.backends import token_count
from herd.collect.grading import Grader, agreement, get_grader, majority

if TYPE_CHECKING:
    from herd.gateway.chat import ChatRequest
    from herd.gateway.dispatch import Dispatcher
    from herd.gateway.selection import Plan


@dataclass
class Checked:
    """What a checked cascade's first models did: each step, every call, what they cost, and
    the answer that stood (None: pass the query on)."""

    steps: list[dict] = field(default_factory=list)
    attempts: list[dict] = field(default_factory=list)
    cost: float | None = 0.0
    model: str | None = None
    answer: dict | None = None

    def describe(self, name: str) -> dict:
        """Its entries in the ``herd`` object; ``name`` is the model whose reply stands."""
        return {"cascade": self.steps}

    def logged(self) -> dict:
        """Its entries in the choice log."""
        return {"cascade": [{"model": s["model"], "accepted": s.get("accepted")} for s in self.steps]}

    def headers(self) -> dict:
        return {}


def sample_body(body: dict, i: int, samples: int) -> dict:
    """One of ``samples`` answers to check: a single choice, not streamed; several samples are
    drawn at temperature 0.7 unless the request sets a positive one, each with its own seed."""
    out = {**body, "stream": False, "n": 1}
    out.pop("stream_options", None)
    if samples > 1:
        if not body.get("temperature"):
            out["temperature"] = 0.7
        out["seed"] = int(body.get("seed") or 0) + i
    return out


def usage_of(data: dict) -> dict:
    return data.get("usage") if isinstance(data.get("usage"), dict) else {}


def reply_text(data: dict) -> str:
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return ""
    return content if isinstance(content, str) else ""


def plus(total: float | None, cost: float | None) -> float | None:
    return None if total is None or cost is None else total + cost


async def as_events(data: dict):
    """A complete answer as a chat.completion.chunk stream: content, finish, usage, done."""
    choice = (data.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    base = {"id": data.get("id"), "object": "chat.completion.chunk", "created": data.get("created"), "model": data["model"]}
    delta = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("tool_calls"):
        delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(message["tool_calls"])]
    events = [{**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}], "herd": data["herd"]},
              {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason") or "stop"}]}]
    if data.get("usage"):
        events.append({**base, "choices": [], "usage": data["usage"]})
    for e in events:
        yield f"data: {json.dumps(e)}\n\n".encode()
    yield b"data: [DONE]\n\n"


def judge(policy, grader: Grader, score_row: np.ndarray, models: list[str], name: str,
          replies: list[dict]) -> tuple[dict, dict | None]:
    """One step of the cascade: what ``name``'s replies showed, P(right) from the policy's
    scorer, and the reply that stands (one giving the majority answer), or None to go on."""
    texts = [reply_text(d) for d in replies]
    answers = [grader.extract(t) for t in texts]
    observed = {"output_chars": float(np.mean([len(t) for t in texts]))}
    tokens = [token_count(usage_of(d).get("completion_tokens")) for d in replies]
    if all(t is not None for t in tokens):
        observed["output_tokens"] = float(np.mean(tokens))
    if policy.samples > 1:
        observed["agreement"] = agreement(answers, grader.correct)
    stage = models.index(name)
    grid = {k: np.where(np.arange(len(models)) == stage, v, np.nan)[None, :] for k, v in observed.items()}
    p_right = float(policy.deferral(score_row[None, :], grid)[0, stage])
    accepted = p_right >= policy.cutoff
    step = {"model": name, "samples": len(replies), "answers": answers, **{k: round(v, 4) for k, v in observed.items()},
            "p_right": round(p_right, 4), "threshold": round(policy.cutoff, 4), "accepted": accepted}
    if not accepted:
        return step, None
    top = majority(answers, grader.correct)
    kept = next((d for d, a in zip(replies, answers) if top is not None and grader.correct(a, top)), replies[0])
    return step, kept


async def ask_in_turn(dispatch: Dispatcher, req: ChatRequest, plan: Plan, models: list[str]) -> Checked:
    """Ask each checked model of a cascade in turn (``samples`` answers at once) and keep the
    first answer the policy's scorer trusts: its P(right) from the router's score (over
    ``models``, the router's), the answers' length and their agreement (maj@k) must reach the
    tuned threshold."""
    policy, checked = plan.check_policy, Checked()
    grader = get_grader(policy.grader)
    for name in plan.checks:
        bodies = [sample_body(req.body, i, policy.samples) for i in range(policy.samples)]
        replies = await asyncio.gather(*(dispatch.call_in_order([name], b, False) for b in bodies))
        answered = []
        for _, outcome, attempts in replies:
            checked.attempts += attempts
            if outcome is not None and outcome.kind == "ok":
                checked.cost = plus(checked.cost, dispatch.account_reply(name, outcome.data))
                answered.append(outcome.data)
        if not answered:
            checked.steps.append({"model": name, "samples": 0, "outcome": "no answer"})
            continue
        step, checked.answer = judge(policy, grader, plan.score_row, models, name, answered)
        checked.steps.append(step)
        if checked.answer is not None:
            checked.model = name
            break
    return checked
