"""Calling a plan's models: each in turn, through its circuit breaker and within its slots, called
again on failures its ``RetryPolicy`` retries, until one answers; and what each call cost,
counted in the metrics and on the request's tab."""

from __future__ import annotations

import asyncio
import time
from typing import Callable

import aiohttp

from herd.backends import Backend, Outcome, token_count
from herd.gateway import telemetry as tm
from herd.gateway.cascade import usage_of
from herd.gateway.errors import GatewayError
from herd.gateway.keys import TAB
from herd.pool import PoolConfig
from herd.retry import RetryPolicy


class Dispatcher:
    def __init__(self, pool: PoolConfig, session_factory: Callable[[], aiohttp.ClientSession] | None = None):
        self.backends = {m.name: Backend(m, pool.gateway, session_factory) for m in pool.models}
        self.retry = {m.name: RetryPolicy.gateway(m, pool.gateway) for m in pool.models}
        self.slot_wait_s = pool.gateway.slot_wait_s

    async def answer(self, candidates: list[str], body: dict, stream: bool,
                     path: str) -> tuple[str, Outcome, list[dict]]:
        """The first candidate's answer, or a 503 naming what each did."""
        name, outcome, attempts = await self.call_in_order(candidates, body, stream, path)
        if outcome is None:
            chain = ", ".join(f"{a['model']}: {a['outcome']}" for a in attempts)
            raise GatewayError(503, f"no eligible model answered ({chain})", code="backends_unavailable",
                               headers={"x-herd-attempts": str(calls(attempts))})
        return name, outcome, attempts

    async def call_in_order(self, candidates: list[str], body: dict, stream: bool,
                            path: str = "/chat/completions") -> tuple[str | None, Outcome | None, list[dict]]:
        """Call the candidates in order until one answers ("ok", or "client": the request is wrong
        for every model): its name, outcome and every attempt. A model with its circuit open or
        no slot free is skipped; one that says the request is too long is passed over, and that
        error is the answer if no model takes it. (None, None, attempts) when none answered."""
        attempts: list[dict] = []
        too_long = None
        for rank, name in enumerate(candidates):
            backend, retry = self.backends[name], self.retry[name]
            for attempt in range(retry.attempts):
                if not backend.circuit.allow():
                    attempts.append({"model": name, "outcome": "skipped: circuit open"})
                    break
                t0 = time.perf_counter()
                outcome = await backend.call(body, stream, path, slot_wait_s=self.slot_wait_s)
                if outcome.kind == "busy":  # not called: no attempt to count, the next model may be free
                    attempts.append({"model": name, "outcome": f"skipped: {outcome.detail}"})
                    break
                seconds = time.perf_counter() - t0
                attempts.append({"model": name, "outcome": outcome.detail, "ms": round(seconds * 1000, 1)})
                tm.labelled(tm.BACKEND_SECONDS, name).observe(seconds)
                if outcome.kind in ("ok", "client"):
                    return name, outcome, attempts
                if outcome.kind == "too_long":
                    too_long = too_long or (name, outcome)
                    break
                tm.labelled(tm.ATTEMPT_ERRORS, name, outcome.detail).inc()
                if (pause := retry.pause(outcome, attempt)) is None:
                    break
                await asyncio.sleep(pause)
            if rank < len(candidates) - 1:
                tm.labelled(tm.FALLBACKS, name).inc()
        if too_long is not None:  # no model took it: the caller sees why (a 400 or 413 of OpenAI's shape)
            name, outcome = too_long
            outcome.kind = "client"
            return name, outcome, attempts
        return None, None, attempts

    def account_reply(self, name: str, data: dict) -> float | None:
        usage = usage_of(data)
        return self.account(name, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def account(self, name: str, prompt, completion) -> float | None:
        """One call's tokens and cost (None: the model has no price) in the metrics and on the
        request's tab."""
        model = self.backends[name].config
        prompt, completion = token_count(prompt) or 0.0, token_count(completion) or 0.0
        tm.labelled(tm.TOKENS, name, "prompt").inc(prompt)
        tm.labelled(tm.TOKENS, name, "completion").inc(completion)
        cost = model.cost(prompt, completion)
        if cost is not None:
            tm.labelled(tm.COST, name).inc(cost)
        if (tab := TAB.get()) is not None:  # the request's key is charged for every call
            tab.add(name, prompt, completion, cost)
        return cost

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.backends.values()))


def calls(attempts: list[dict]) -> int:
    """The backend calls made (skipped models are attempts, not calls)."""
    return sum("ms" in a for a in attempts)
