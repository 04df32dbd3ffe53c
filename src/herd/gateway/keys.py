"""Client API keys and what each may do: the keys file (one key per line, or YAML with a name and
limits per key), the model allow-list, and the limits themselves (requests and tokens per
minute, USD per day and per month), enforced through a ``State`` (gateway/state.py) so every
process sharing it enforces one limit.

A request of a limited key is admitted before any backend call: its worst case (every call its
plan may make, each at ``max_tokens`` and the model's price) is held against the budgets, and the
spend of every call it made (cascades and fan-outs included) replaces the hold when it ends."""

from __future__ import annotations

import math
import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from herd.errors import HerdError
from herd.gateway import telemetry as tm
from herd.gateway.chat import ChatRequest
from herd.gateway.errors import GatewayError
from herd.gateway.selection import Plan
from herd.gateway.state import Charge, State, StateDown, periods
from herd.jsonl import read_text
from herd.pool import PoolConfig, _describe

ENV_KEYS = "HERD_API_KEYS"
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The request being answered: every backend call's usage is added to its tab, wherever in a
# cascade or fan-out the call is made (asyncio tasks inherit it).
TAB: ContextVar[Optional["Tab"]] = ContextVar("herd_tab", default=None)


class KeysError(HerdError, ValueError):
    """A keys file or key settings that cannot serve; the message names the file, key and fix."""


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=r"^[\w.:-]{1,64}$", description="shown in /metrics and the ledger, never the key")
    key: Optional[str] = Field(None, min_length=1)
    key_env: Optional[str] = Field(None, min_length=1)
    rpm: Optional[int] = Field(None, gt=0, description="requests per minute (sliding 60 s)")
    tpm: Optional[int] = Field(None, gt=0, description="tokens per minute (sliding 60 s)")
    budget_usd_per_day: Optional[float] = Field(None, ge=0)
    budget_usd_per_month: Optional[float] = Field(None, ge=0)
    models: Optional[list[str]] = Field(None, description="the models this key may ask for")

    @model_validator(mode="after")
    def _one_key(self) -> KeyEntry:
        if (self.key is None) == (self.key_env is None):
            raise ValueError("give exactly one of 'key' and 'key_env'")
        return self


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    keys: list[KeyEntry] = Field(min_length=1)


@dataclass(frozen=True)
class ClientKey:
    """One client key: its name (what /metrics and the ledger show), the secret, its limits."""

    name: str
    secret: bytes
    rpm: int | None = None
    tpm: int | None = None
    day_usd: float | None = None
    month_usd: float | None = None
    models: frozenset[str] | None = None

    @property
    def limited(self) -> bool:
        return any(x is not None for x in (self.rpm, self.tpm, self.day_usd, self.month_usd))

    def allow(self, model: str) -> None:
        if self.models is not None and model not in self.models:
            raise GatewayError(403, f"this API key ({self.name}) may not use model {model!r}; it may use "
                                    f"{sorted(self.models)}", param="model", code="model_not_allowed")


def read_api_keys(keys_file: str | Path | None = None) -> list[ClientKey]:
    """Keys from ``HERD_API_KEYS`` (comma-separated; named env-1, env-2, ...) and a keys file:
    one key per line (# comments; named key-1, key-2, ...) or YAML with a ``keys`` list."""
    keys = [ClientKey(f"env-{i}", k.encode())
            for i, k in enumerate((k.strip() for k in os.environ.get(ENV_KEYS, "").split(",") if k.strip()), 1)]
    if keys_file:
        keys += _read_file(Path(keys_file))
    names, secrets = set(), set()
    for k in keys:
        if k.name in names:
            raise KeysError(f"{keys_file}: key name {k.name!r} appears twice")
        if k.secret in secrets:
            raise KeysError(f"{keys_file}: key {k.name!r} repeats another key's secret")
        names.add(k.name)
        secrets.add(k.secret)
    return keys


def _read_file(path: Path) -> list[ClientKey]:
    text = read_text(path, KeysError, "API keys file")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        raw = None  # a key that is not YAML: the plain format
    if not isinstance(raw, dict):
        lines = [k.strip() for k in text.splitlines() if k.strip() and not k.strip().startswith("#")]
        return [ClientKey(f"key-{i}", k.encode()) for i, k in enumerate(lines, 1)]
    try:
        entries = KeysFile.model_validate(raw).keys
    except ValidationError as e:
        root = yaml.compose(text)
        raise KeysError("\n".join(_describe(path, root, err) for err in e.errors())) from None
    keys = []
    for i, e in enumerate(entries):
        secret = e.key
        if e.key_env is not None:
            secret = os.environ.get(e.key_env)
            if not secret:
                raise KeysError(f"{path}: keys[{i}] ({e.name}): environment variable {e.key_env} is not set")
        keys.append(ClientKey(e.name, secret.encode(), e.rpm, e.tpm, e.budget_usd_per_day, e.budget_usd_per_month,
                              frozenset(e.models) if e.models is not None else None))
    return keys


def serving_keys(keys_file: str | Path | None, no_auth: bool, host: str) -> list[ClientKey]:
    """The client keys to require, or a ValueError saying why herd will not start: keys asked for
    (a keys file, HERD_API_KEYS) but none read, or no keys on an address beyond loopback without
    ``no_auth``. Serving without auth is a choice, never an accident of an empty file."""
    keys = read_api_keys(keys_file)
    asked = keys_file is not None or ENV_KEYS in os.environ
    if no_auth:
        if keys:
            raise KeysError("--no-auth, but API keys were given (HERD_API_KEYS or --api-keys-file): choose one")
        return []
    if asked and not keys:
        raise KeysError(f"API keys were asked for ({keys_file or ENV_KEYS}) but none were read; add keys, "
                         "or pass --no-auth to serve without auth")
    if not keys and host not in LOOPBACK:
        raise KeysError(f"serving on {host} without API keys: set {ENV_KEYS} or --api-keys-file, or pass --no-auth")
    return keys


def as_keys(keys: list[ClientKey | str] | None) -> list[ClientKey]:
    """Keys given as plain strings get names key-1, key-2, ..."""
    return [k if isinstance(k, ClientKey) else ClientKey(f"key-{i}", k.encode()) for i, k in enumerate(keys or [], 1)]


@dataclass
class Tab:
    """One request's account: what its plan could cost at worst (held while it runs) and what each
    model's calls did cost."""

    key: ClientKey | None
    request_id: str
    worst: float = 0.0
    held_by: str | None = None  # which store holds the worst case: "shared" or "local"
    day: str = ""  # the UTC day and month it is counted in: those of its admission
    month: str = ""
    usd: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, list[float]] = field(default_factory=dict)

    def add(self, model: str, prompt: float, completion: float, cost: float | None) -> None:
        self.usd[model] = self.usd.get(model, 0.0) + (cost or 0.0)
        self.calls[model] = self.calls.get(model, 0) + 1
        t = self.tokens.setdefault(model, [0.0, 0.0])
        t[0] += prompt
        t[1] += completion

    def charge(self) -> Charge:
        return Charge(self.key.name if self.key else "-", self.request_id, self.worst, self.held_by, self.usd,
                      self.calls, {m: (p, c) for m, (p, c) in self.tokens.items()}, self.day, self.month)


class Limits:
    """Admits requests against their key's limits and charges what they spent, through ``state``."""

    def __init__(self, pool: PoolConfig, state: State):
        self.pool, self.state = pool, state
        self.by_name = {m.name: m for m in pool.models}

    def needs_tab(self, key: ClientKey | None) -> bool:
        """A tab is kept when the key is limited or a shared ledger records every request."""
        return (key is not None and key.limited) or self.state.ledger_kept

    async def admit(self, key: ClientKey | None, req: ChatRequest, plan: Plan) -> Tab:
        tab = Tab(key, req.request_id)
        tab.day, tab.month = periods()
        if key is None or not key.limited:
            return tab
        if (key.day_usd is not None or key.month_usd is not None) and req.max_tokens is None:
            # The budget is checked against this length, so the backend must not write more.
            req.max_tokens = req.body["max_tokens"] = self.pool.gateway.default_output_tokens
        tab.worst = self.worst_cost(req, plan)
        try:
            refusal, tab.held_by = await self.state.admit(key, tab.worst, req.request_id, tab.day, tab.month)
        except StateDown:
            raise GatewayError(503, "the limits store is unreachable and the gateway is set to fail closed; "
                                    "try again shortly", code="limits_unavailable", headers={"retry-after": "1"})
        if refusal is not None:
            tm.labelled(tm.KEY_REFUSALS, key.name, refusal.limit).inc()
            raise _refused(key, refusal, tab.worst)
        return tab

    def worst_cost(self, req: ChatRequest, plan: Plan) -> float:
        """Every call the plan may make at ``max_tokens`` and the model's price (the prompt counted
        high): the checked or fanned-out models, then the dearest of the candidates (only one of
        them answers; the others fail, at no cost). Models without prices count nothing."""
        output = (req.max_tokens or self.pool.gateway.default_output_tokens) * req.n
        prompt = req.prompt_tokens_high + 4 * req.n_messages

        def cost(name: str) -> float:
            c = self.by_name[name].cost(prompt, output)
            return 0.0 if c is None or math.isnan(c) else c

        samples = plan.check_policy.samples if plan.checks else 1
        first = samples * sum(map(cost, plan.checks)) + sum(map(cost, plan.fan_out))
        return first + max(map(cost, plan.candidates), default=0.0)

    def settle(self, tab: Tab) -> None:
        """Charge the tab's spend once the request has ended (a shared store is written off the
        answer's path)."""
        if tab.key is not None:
            spent = sum(tab.usd.values())
            if spent:
                tm.labelled(tm.KEY_SPEND, tab.key.name).inc(spent)
        self.state.settle(tab.charge())

    async def close(self) -> None:
        await self.state.close()


def _refused(key: ClientKey, refusal, worst: float) -> GatewayError:
    headers = {"retry-after": str(max(1, math.ceil(refusal.retry_after_s)))}
    if refusal.limit in ("rpm", "tpm"):
        what = {"rpm": f"{key.rpm} requests", "tpm": f"{key.tpm} tokens"}[refusal.limit]
        return GatewayError(429, f"rate limit of API key {key.name}: {what} per minute; retry after "
                                 f"{headers['retry-after']} s", code="rate_limit_exceeded", headers=headers)
    budget = key.day_usd if refusal.limit == "day" else key.month_usd
    period = "daily" if refusal.limit == "day" else "monthly"
    return GatewayError(429, f"API key {key.name} has ${max(0.0, budget - refusal.used):.6g} of its {period} budget "
                             f"${budget:g} left; this request could cost up to ${worst:.6g} (max_tokens at the "
                             "model's price)", code="insufficient_quota", type_="insufficient_quota", headers=headers)
