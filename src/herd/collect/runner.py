"""Asking every pool model every question (k times), concurrently and politely: each backend's
``max_concurrency`` bounds its calls in flight, 429s wait out ``Retry-After``, transient failures
are retried with jittered backoff, and a call that still fails is recorded as a failure, never
graded as a wrong answer."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from herd.backends import Backend
from herd.collect.grading import get_grader
from herd.collect.prompts import COMPLETION_STOP, Prompts
from herd.collect.recorder import Recorder
from herd.collect.tasks import Item, Task
from herd.pool import GatewaySettings, ModelConfig


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
    correct: int = 0
    tokens: int = 0
    cost: float = 0.0
    latency: float = 0.0
    errors: dict = field(default_factory=dict)


async def run(task: Task, models: list[ModelConfig], prompts: Prompts, sampling: Sampling, rec: Recorder,
              on_call: Optional[Callable[[str, ModelTally], None]] = None) -> dict[str, ModelTally]:
    grader = get_grader(task.grader)
    exemplars = prompts.exemplars(task)
    done = rec.done()
    tallies = {m.name: ModelTally() for m in models}
    settings = GatewaySettings()
    backends = {m.name: Backend(m, settings) for m in models}

    async def ask(model: ModelConfig, item: Item, sample: int) -> None:
        backend, tally = backends[model.name], tallies[model.name]
        body = {"temperature": sampling.effective_temperature, "max_tokens": sampling.max_tokens, "seed": sample}
        if model.prompt_style == "chat":
            body["messages"], path = prompts.chat(task, item), "/chat/completions"
        else:
            body.update(prompt=prompts.completion(task, item, exemplars), stop=COMPLETION_STOP)
            path = "/completions"
        started = time.perf_counter()
        errors = []
        for attempt in range(sampling.max_retries + 1):
            outcome = await backend.call(body, path=path)
            if outcome.kind == "ok":
                break
            errors.append(outcome.detail)
            if outcome.kind != "retry" or attempt == sampling.max_retries:
                break
            await asyncio.sleep(backend.backoff(attempt, outcome.retry_after))
        latency = time.perf_counter() - started
        record = {"model": model.name, "qid": item.id, "sample": sample, "attempts": len(errors) + (outcome.kind == "ok")}
        if outcome.kind != "ok":
            tally.failed += 1
            tally.errors[errors[-1]] = tally.errors.get(errors[-1], 0) + 1
            rec.append({**record, "ok": False, "error": "; ".join(errors)})
        else:
            choice = outcome.data["choices"][0] if outcome.data["choices"] else {}
            text = (choice.get("message") or {}).get("content") if model.prompt_style == "chat" else choice.get("text")
            text = text if isinstance(text, str) else ""
            usage = outcome.data.get("usage") if isinstance(outcome.data.get("usage"), dict) else {}
            prompt_tokens, completion_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
            cost = model.cost(prompt_tokens or 0, completion_tokens or 0) if usage else None
            answer = grader.extract(text)
            right = grader.correct(answer, item.answer)
            tally.answered += 1
            tally.correct += right
            tally.tokens += int(completion_tokens or 0) + int(prompt_tokens or 0)
            tally.cost += cost or 0.0
            tally.latency += latency
            rec.append({**record, "ok": True, "text": text, "answer": answer, "correct": float(right),
                        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                        "latency_s": round(latency, 4), "cost_usd": cost, "finish_reason": choice.get("finish_reason")})
        if on_call:
            on_call(model.name, tally)

    async def worker(model: ModelConfig, todo) -> None:
        for item, sample in todo:
            await ask(model, item, sample)

    workers = []
    for model in models:
        todo = [(item, s) for item in task.items for s in range(sampling.samples)
                if (model.name, item.id, s) not in done]
        tallies[model.name].todo = len(todo)
        shared = iter(todo)  # max_concurrency workers per model draw from one queue
        workers += [worker(model, shared) for _ in range(min(model.max_concurrency, len(todo)))]
    try:
        await asyncio.gather(*workers)
    finally:
        await asyncio.gather(*(b.close() for b in backends.values()))
    return tallies
