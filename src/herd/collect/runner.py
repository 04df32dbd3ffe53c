"""Asking every pool model every question (k times), concurrently and politely: each backend's
``max_concurrency`` bounds its calls in flight, failures are retried by the gateway's rule for
one model (``RetryPolicy.collection``: transient failures and timeouts, after a jittered backoff
or the backend's Retry-After), and a call that still fails is recorded as a failure, never graded
as a wrong answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from herd.backends import Backend, token_count
from herd.collect.prompts import COMPLETION_STOP, Prompts
from herd.collect.recorder import Call, Recorder, call_key
from herd.collect.tasks import Task
from herd.pool import GatewaySettings, ModelConfig
from herd.retry import RetryPolicy


@dataclass
class Sampling:
    samples: int = 1
    temperature: float | None = None  # None: 0 for one sample, 0.7 for several
    max_tokens: int = 512
    max_retries: int = 5

    @property
    def effective_temperature(self) -> float:
        return self.temperature if self.temperature is not None else (0.0 if self.samples == 1 else 0.7)

    def describe(self) -> dict:
        return {"temperature": self.effective_temperature, "max_tokens": self.max_tokens}


@dataclass
class ModelTally:
    """What one model has done in this run, for the progress bar and the summary."""

    todo: int = 0
    answered: int = 0
    failed: int = 0
    tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0
    errors: dict = field(default_factory=dict)


def plan_calls(task: Task, models: list[ModelConfig], prompts: Prompts, sampling: Sampling
               ) -> dict[Call, tuple[str, dict, str]]:
    """Every call of the run: (model, qid, sample) -> (endpoint, body, key)."""
    exemplars = prompts.exemplars(task)
    calls = {}
    for model in models:
        for item in task.items:
            body = {"temperature": sampling.effective_temperature, "max_tokens": sampling.max_tokens}
            if model.prompt_style == "chat":
                body["messages"], path = prompts.chat(task, item), "/chat/completions"
            else:
                body.update(prompt=prompts.completion(task, item, exemplars), stop=COMPLETION_STOP)
                path = "/completions"
            key = call_key(model, path, body)
            for sample in range(sampling.samples):
                calls[(model.name, item.id, sample)] = (path, {**body, "seed": sample}, key)
    return calls


async def run(todo: dict[Call, tuple[str, dict, str]], models: list[ModelConfig], settings: GatewaySettings,
              sampling: Sampling, rec: Recorder,
              on_call: Optional[Callable[[str, ModelTally], None]] = None) -> dict[str, ModelTally]:
    """Make the calls in ``todo`` and record each as it finishes."""
    tallies = {m.name: ModelTally() for m in models}
    backends = {m.name: Backend(m, settings) for m in models}
    by_name = {m.name: m for m in models}
    retry = RetryPolicy.collection(sampling.max_retries, settings)

    async def ask(call: Call) -> None:
        name, qid, sample = call
        path, body, key = todo[call]
        model, backend, tally = by_name[name], backends[name], tallies[name]
        errors = []
        for attempt in range(retry.attempts):
            started = time.perf_counter()
            outcome = await backend.call(body, path=path)
            latency = time.perf_counter() - started  # of this attempt: backoff waits are not the model's
            if outcome.kind == "ok":
                break
            errors.append(outcome.detail)
            if (pause := retry.pause(outcome, attempt)) is None:
                break
            await asyncio.sleep(pause)
        record = {"model": name, "qid": qid, "sample": sample, "key": key, "attempts": len(errors) + (outcome.kind == "ok")}
        if outcome.kind != "ok":
            tally.failed += 1
            tally.errors[errors[-1]] = tally.errors.get(errors[-1], 0) + 1
            rec.append({**record, "ok": False, "error": "; ".join(errors)})
        else:
            choice = outcome.data["choices"][0] if outcome.data["choices"] else {}
            choice = choice if isinstance(choice, dict) else {}
            text = (choice.get("message") or {}).get("content") if model.prompt_style == "chat" else choice.get("text")
            text = text if isinstance(text, str) else ""
            usage = outcome.data.get("usage") if isinstance(outcome.data.get("usage"), dict) else {}
            prompt_tokens, completion_tokens = (_whole(token_count(usage.get(k))) for k in ("prompt_tokens", "completion_tokens"))
            cost = model.cost(prompt_tokens or 0, completion_tokens or 0) if usage else None
            tally.answered += 1
            tally.tokens += (completion_tokens or 0) + (prompt_tokens or 0)
            tally.cost += cost or 0.0
            tally.latency += latency
            rec.append({**record, "ok": True, "text": text, "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens, "latency_s": round(latency, 4), "cost_usd": cost,
                        "finish_reason": choice.get("finish_reason")})
        if on_call:
            on_call(name, tally)

    async def worker(calls) -> None:
        for call in calls:
            await ask(call)

    workers = []
    for model in models:
        mine = [c for c in todo if c[0] == model.name]
        tallies[model.name].todo = len(mine)
        shared = iter(mine)  # max_concurrency workers per model draw from one queue
        workers += [worker(shared) for _ in range(min(model.max_concurrency, len(mine)))]
    try:
        await asyncio.gather(*workers)
    finally:
        await asyncio.gather(*(b.close() for b in backends.values()))
    return tallies


def _whole(tokens: float | None) -> int | None:
    return None if tokens is None else int(tokens)
