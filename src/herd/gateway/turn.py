"""One chat request on its way through the gateway, and what it tells the client and the logs."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from herd.gateway.cascade import Checked
from herd.gateway.chat import ChatRequest
from herd.gateway.dispatch import calls
from herd.gateway.keys import Tab
from herd.gateway.selection import Plan


@dataclass(slots=True)
class Turn:
    """The request, its plan and what has been done for it so far."""

    req: ChatRequest
    plan: Plan  # as planned, then as it went (a fallback rewrites its reason)
    route: str  # the route asked for ("herd", "herd:cheap", ...) or "direct"
    started: float  # time.perf_counter() on arrival
    tab: Tab | None = None  # the key's account of this request, when one is kept
    first: Checked | None = None  # a cascade's first answers (checked in turn or together)
    model: str | None = None  # the model whose answer the client gets
    attempts: list[dict] = field(default_factory=list)  # every call and skip, the cascade's first
    cost: float | None = None  # USD of every call, once known (None: a price is unknown)

    def answered_by(self, name: str, attempts: list[dict]) -> None:
        """The candidates' calls ended with ``name``'s answer (or its error for the client)."""
        if name != self.plan.candidates[0]:
            self.plan = self.plan.fell_back(name, attempts)
        self.model, self.attempts = name, self.attempts + attempts

    def meta(self) -> dict:
        """The ``herd`` object of the answer."""
        plan = self.plan
        meta = {"request_id": self.req.request_id, "model": self.model, "chosen": plan.first, **plan.describe(),
                "attempts": self.attempts, "cost_usd": self.cost}
        if self.first is not None:
            meta.update(self.first.describe(self.model))
        return meta

    def headers(self) -> dict:
        """What herd did, in headers; the cost when it is known before the body."""
        plan = self.plan
        headers = {"x-herd-model": header(self.model), "x-herd-reason": header(plan.reason)[:400],
                   "x-herd-attempts": str(calls(self.attempts)), "x-herd-request-id": self.req.request_id}
        if plan.policy:
            headers["x-herd-policy"] = plan.policy
        if plan.fallback:
            headers["x-herd-fallback"] = header(plan.fallback)[:400]
        if self.cost is not None:
            headers["x-herd-cost-usd"] = f"{self.cost:.6g}"
        if self.first is not None:
            headers.update({k: header(v)[:400] for k, v in self.first.headers().items()})
        return headers

    def record(self, status: str) -> dict:
        """Its line in the choice log (and the JSON decision log)."""
        req, plan = self.req, self.plan
        return {"time": round(time.time(), 3), "request_id": req.request_id, "turn": req.turn, "key": req.key,
                "route": self.route, "policy": plan.policy, "chosen": plan.first, "propensity": plan.propensity,
                "allowed": plan.allowed, "explored": plan.explored, "model": self.model, "reason": plan.reason,
                "fallback": plan.fallback, "calls": calls(self.attempts), "status": status, "cost_usd": self.cost,
                "ms": round((time.perf_counter() - self.started) * 1000, 1), "cascade": None,
                **(self.first.logged() if self.first is not None else {})}


def header(text: str) -> str:
    """A header value: one line of latin-1."""
    return " ".join(text.splitlines()).encode("latin-1", "replace").decode("latin-1")
