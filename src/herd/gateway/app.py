"""The OpenAI-compatible gateway: route, call, fall back, and say what was done.

Nothing a later request needs is kept per request in this process (the conversation in each
request is the whole state), so replicas behind any load balancer behave as one. What must be
shared, keys' limits and spend and backend health, lives in a state store (gateway/state.py).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import traceback
import uuid
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from herd import __version__
from herd.gateway import telemetry as tm
from herd.backends import Backend, Outcome, read_json, token_count
from herd.collect.grading import get_grader
from herd.gateway.agree import ask_first_stage
from herd.gateway.cascade import Checked, as_events, judge, plus, sample_body, usage_of
from herd.gateway.chat import CHARS_PER_TOKEN_COST, ChatRequest, parse_chat, parse_completion
from herd.gateway.choices import ENV_CHOICE_LOG, ChoiceLog, session_secret
from herd.gateway.errors import GatewayError, error_body, error_response, relayed_error
from herd.gateway.feedback import ENV_FEEDBACK_LOG, Feedback
from herd.gateway.keys import TAB, ClientKey, Limits, as_keys, read_api_keys
from herd.gateway.selection import Plan, Selector
from herd.gateway.state import SharedHealth, make_state
from herd.json_logs import ENV_LOG_FORMAT, AccessLog, decision_log
from herd.pool import PoolConfig, load_pool

log = logging.getLogger("herd.gateway")
ENV_POOL, ENV_KEYS_FILE = "HERD_POOL", "HERD_API_KEYS_FILE"
ENV_LOG_PROMPTS, ENV_EXPLORE, ENV_EXPLORE_SEED = "HERD_LOG_PROMPTS", "HERD_EXPLORE", "HERD_EXPLORE_SEED"


class Gateway:
    def __init__(self, pool: PoolConfig, selector: Selector, api_keys: list[ClientKey | str] | None = None,
                 choice_log: ChoiceLog | None = None, log_decisions: bool = False,
                 feedback_log: str | Path | None = None):
        self.pool = pool
        self.selector = selector
        self.choice_log = choice_log
        self.log_decisions = log_decisions  # a JSON decision line per request (--log-format json)
        self.keys = as_keys(api_keys)
        self.backends = {m.name: Backend(m, pool.gateway) for m in pool.models}
        selector.circuits = {name: b.circuit for name, b in self.backends.items()}  # resting models are not allowed
        state = make_state(pool.gateway)
        # Without limits or a shared ledger, requests take no detour through them.
        self.limits = Limits(pool, state) if state.ledger_kept or any(k.limited for k in self.keys) else None
        self.shared_health = SharedHealth(state, self.backends)
        self.feedback = Feedback(feedback_log, state, pool.gateway.feedback_window_days) if feedback_log else None
        self.secrets = [k for m in pool.models if (k := m.api_key())]  # never relayed to a client
        self.max_body = int(pool.gateway.max_body_mb * 1024 * 1024)

    def has_key(self, request: Request) -> bool:
        try:
            self.check_key(request)
        except GatewayError:
            return False
        return True

    def check_key(self, request: Request) -> ClientKey | None:
        """The client key the request sends (None when herd serves without keys)."""
        if not self.keys:
            return None
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        given = token.strip().encode() if scheme.lower() == "bearer" else b""
        # Compare with every key, whatever matches, so timing says nothing about which key is close.
        matched = None
        for key in self.keys:
            if hmac.compare_digest(given, key.secret):
                matched = key
        if matched is None:
            raise GatewayError(401, "missing API key: send 'Authorization: Bearer <key>'" if not given
                               else "incorrect API key", code="invalid_api_key")
        return matched

    async def read_body(self, request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            raise self._too_large()
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_large()
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self) -> GatewayError:
        return GatewayError(413, f"request body is larger than {self.pool.gateway.max_body_mb:g} MB", code="body_too_large")

    async def chat(self, request: Request, parse=parse_chat) -> Response:
        """Answer a chat request (or, with ``parse_completion``, a prompt passed through). Whatever goes wrong is counted and answered in OpenAI's shape: a
        client gone before its body arrived is a 499, an error herd did not foresee a 500 with
        one log line naming the request."""
        request.state.request_id = rid = uuid.uuid4().hex
        try:
            return await self._chat(request, parse)
        except ClientDisconnect:
            log.info("request %s: the client went away before sending its whole body", rid)
            tm.REQUESTS.labels("disconnected", "499").inc()
            return Response(status_code=499)
        except GatewayError:
            raise
        except Exception as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            # The type and place, not the message: a message may quote the request's text.
            log.error("request %s: unexpected %s at %s:%d (%s)", rid, type(e).__name__, Path(where.filename).name,
                      where.lineno, where.name)
            tm.REQUESTS.labels(getattr(request.state, "route", "rejected"), "500").inc()
            return error_response(500, f"internal error in herd ({type(e).__name__}); the server log names request "
                                       f"{rid}", code="internal_error", headers={"x-herd-request-id": rid})

    async def _chat(self, request: Request, parse) -> Response:
        started = time.perf_counter()
        key = self.check_key(request)
        req = parse(await self.read_body(request), request.headers)
        req.request_id = request.state.request_id
        if req.path == "/completions" and req.model not in self.backends:
            raise GatewayError(404 if req.model not in self.selector.route_names else 400,
                               f"model {req.model!r}: /v1/completions passes a prompt to the pool model it names, one "
                               f"of {self.selector.names}; herd routes chat requests (/v1/chat/completions)",
                               param="model", code="model_not_found")
        if key is not None:
            req.key = key.name
            tm.KEY_REQUESTS.labels(key.name).inc()
            key.allow(req.model)
        if req.options.max_cost_usd is not None and req.max_tokens is None:
            # The ceiling is checked against this length, so the backend must not write more.
            req.max_tokens = req.body["max_tokens"] = self.pool.gateway.default_output_tokens
        routed = req.model not in self.backends
        # Scoring a query is CPU work (features, maybe an embedding): unless the router is quick, keep
        # it off the event loop.
        slow = routed and not self.selector.quick
        plan = await run_in_threadpool(self.selector.plan, req) if slow else self.selector.plan(req)
        request.state.route = route = req.model if routed else "direct"
        tab = None
        if self.limits is not None and self.limits.needs_tab(key):
            tab = await self.limits.admit(key, req, plan)  # a 429 (or 503) before any call
            TAB.set(tab)
        if routed:
            tm.CHOICES.labels(plan.first).inc()
        tm.IN_FLIGHT.inc()
        streaming = False
        try:
            response = await _unless_disconnected(request, self._answer(req, plan, route, started))
            streaming = isinstance(response, _Relay)  # it counts itself out when it closes
            if self.feedback is not None and response.status_code == 200:
                await self.feedback.answered(req.request_id)  # before the client can send feedback on it
            return response
        finally:
            if not streaming:
                tm.IN_FLIGHT.dec()
                if tab is not None:
                    self.limits.settle(tab)

    async def _dispatch(self, candidates: list[str], body: dict, stream: bool,
                        path: str) -> tuple[str, Outcome, list[dict]]:
        """Call the candidates in order, retrying each on transient failures, until one answers."""
        name, outcome, attempts = await self.call_in_order(candidates, body, stream, path)
        if outcome is None:
            chain = ", ".join(f"{a['model']}: {a['outcome']}" for a in attempts)
            raise GatewayError(503, f"no eligible model answered ({chain})", code="backends_unavailable",
                               headers={"x-herd-attempts": str(_calls(attempts))})
        return name, outcome, attempts

    async def call_in_order(self, candidates: list[str], body: dict, stream: bool,
                            path: str = "/chat/completions") -> tuple[str | None, Outcome | None, list[dict]]:
        attempts: list[dict] = []
        too_long = None
        for rank, name in enumerate(candidates):
            backend = self.backends[name]
            for retry in range(backend.config.retries + 1):
                if not backend.circuit.allow():
                    attempts.append({"model": name, "outcome": "skipped: circuit open"})
                    break
                t0 = time.perf_counter()
                outcome = await backend.call(body, stream, path, slot_wait_s=self.pool.gateway.slot_wait_s)
                if outcome.kind == "busy":  # not called: no attempt to count, the next model may be free
                    attempts.append({"model": name, "outcome": f"skipped: {outcome.detail}"})
                    break
                seconds = time.perf_counter() - t0
                attempts.append({"model": name, "outcome": outcome.detail, "ms": round(seconds * 1000, 1)})
                tm.BACKEND_SECONDS.labels(name).observe(seconds)
                if outcome.kind in ("ok", "client"):
                    return name, outcome, attempts
                if outcome.kind == "too_long":
                    too_long = too_long or (name, outcome)
                    break
                tm.ATTEMPT_ERRORS.labels(name, outcome.detail).inc()
                if outcome.kind != "retry" or retry == backend.config.retries:
                    break
                if (outcome.retry_after or 0) > self.pool.gateway.max_backoff_s:
                    break  # the backend asks for a longer pause than a caller should wait: next model
                await asyncio.sleep(backend.backoff(retry, outcome.retry_after))
            if rank < len(candidates) - 1:
                tm.FALLBACKS.labels(name).inc()
        if too_long is not None:  # no model took it: the caller sees why (a 400 or 413 of OpenAI's shape)
            name, outcome = too_long
            outcome.kind = "client"
            return name, outcome, attempts
        return None, None, attempts

    def _meta(self, req: ChatRequest, plan: Plan, name: str, attempts: list[dict], cost: float | None = None,
              checked: Checked | None = None) -> dict:
        meta = {"request_id": req.request_id, "model": name, "chosen": plan.first, **plan.describe(),
                "attempts": attempts, "cost_usd": cost}
        if checked is not None:
            meta.update(checked.describe(name))
        return meta

    def _headers(self, req: ChatRequest, plan: Plan, name: str, attempts: list[dict], checked: Checked | None = None,
                 cost: float | None = None) -> dict:
        """What herd did, in headers; ``cost`` (of every call) when it is known before the body."""
        headers = {"x-herd-model": _header(name), "x-herd-reason": _header(plan.reason)[:400],
                   "x-herd-attempts": str(_calls(attempts)), "x-herd-request-id": req.request_id}
        if plan.policy:
            headers["x-herd-policy"] = plan.policy
        if plan.fallback:
            headers["x-herd-fallback"] = _header(plan.fallback)[:400]
        if cost is not None:
            headers["x-herd-cost-usd"] = f"{cost:.6g}"
        if checked is not None:
            headers.update({k: _header(v)[:400] for k, v in checked.headers().items()})
        return headers

    async def _answer(self, req: ChatRequest, plan: Plan, route: str, started: float) -> Response:
        checked = await self._first_answers(req, plan)
        if checked is not None and checked.answer is not None:
            return self._accepted(req, plan, route, started, checked)
        try:
            name, outcome, attempts = await self._dispatch(plan.candidates, req.body, req.stream, req.path)
        except GatewayError as e:
            if checked is not None:  # the cascade's calls were made too
                e.headers["x-herd-attempts"] = str(_calls(checked.attempts) + int(e.headers.get("x-herd-attempts", 0)))
            self._log_choice(req, plan, route, None, checked.attempts if checked else [], str(e.status), None,
                             started, checked)
            raise
        if name != plan.candidates[0]:
            plan = plan.fell_back(name, attempts)
        if checked is not None:
            attempts = checked.attempts + attempts
        headers = self._headers(req, plan, name, attempts, checked)
        if outcome.kind == "client":
            tm.REQUESTS.labels(route, str(outcome.status)).inc()
            self._log_choice(req, plan, route, name, attempts, str(outcome.status), None, started, checked)
            return Response(relayed_error(outcome.status, outcome.body, self.secrets), status_code=outcome.status,
                            media_type="application/json",
                            headers=headers)
        tm.ANSWERS.labels(name).inc()
        if req.stream:
            meta = self._meta(req, plan, name, attempts, None, checked)
            return self._relay(req, plan, route, started, name, outcome, meta, headers, attempts, checked)
        data = outcome.data
        cost = self.account_reply(name, data)
        if checked is not None:
            cost = plus(cost, checked.cost)
        headers = self._headers(req, plan, name, attempts, checked, cost)
        data["model"] = name
        data["herd"] = self._meta(req, plan, name, attempts, cost, checked)
        tm.REQUESTS.labels(route, "200").inc()
        tm.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
        self._log_choice(req, plan, route, name, attempts, "200", cost, started, checked)
        return Response(json.dumps(data), media_type="application/json", headers=headers)

    def _log_choice(self, req: ChatRequest, plan: Plan, route: str, name: str | None, attempts: list[dict],
                    status: str, cost: float | None, started: float, checked: Checked | None) -> None:
        if self.choice_log is None and not self.log_decisions:
            return
        record = {
            "time": round(time.time(), 3), "request_id": req.request_id, "turn": req.turn,
            "key": req.key, "route": route, "policy": plan.policy, "chosen": plan.first,
            "propensity": plan.propensity, "allowed": plan.allowed, "explored": plan.explored, "model": name,
            "reason": plan.reason, "fallback": plan.fallback, "calls": _calls(attempts), "status": status, "cost_usd": cost,
            "ms": round((time.perf_counter() - started) * 1000, 1), "cascade": None,
            **(checked.logged() if checked is not None else {})}
        if self.choice_log is not None:
            self.choice_log.write(record, req.session, req.options.private, req.router_text)
        if self.log_decisions:  # no session here: the choice log's keyed hash is its own to give
            decision_log.info("decision", extra={"fields": record})

    def _relay(self, req: ChatRequest, plan: Plan, route: str, started: float, name: str, outcome: Outcome,
               meta: dict, headers: dict, attempts: list[dict], checked: Checked | None) -> Response:
        state = {"chars": 0, "prompt": None, "completion": None, "status": "200", "finished": False, "ended": False,
                 "hide_usage": not req.wants_usage}

        async def relay():
            try:
                yield _rewrite(outcome.first_event, name, state, meta)
                async for event in outcome.events:
                    if chunk := _rewrite(event, name, state):
                        yield chunk
                if not state["ended"]:  # closed without [DONE] or a finish_reason: a cut, not an end
                    raise StreamCut()
                state["finished"] = True
            except Exception as e:  # aiohttp's errors, a timeout, or a chunk too malformed to relay
                # Bytes already reached the client, so no fallback: end the stream with an error event.
                state["status"] = "502"
                tm.ATTEMPT_ERRORS.labels(name, "stream broken").inc()
                message = f"backend {name} broke the stream after it began ({type(e).__name__})"
                yield f"data: {json.dumps(error_body(502, message, code='stream_broken'))}\n\n".encode()

        async def close() -> None:
            await self.backends[name].finish(outcome, state["finished"])
            completion = state["completion"] or state["chars"] / CHARS_PER_TOKEN_COST
            cost = self._account(name, state["prompt"] or req.prompt_tokens_estimate(), completion)
            status = state["status"] if state["finished"] or state["status"] != "200" else "499"
            tm.REQUESTS.labels(route, status).inc()
            self._log_choice(req, plan, route, name, attempts, status,
                             plus(cost, checked.cost) if checked is not None else cost, started, checked)
            tm.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
            tm.IN_FLIGHT.dec()
            if (tab := TAB.get()) is not None:
                self.limits.settle(tab)

        return _Relay(relay(), close, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})

    async def _first_answers(self, req: ChatRequest, plan: Plan) -> Checked | None:
        """A cascade's answers read before the candidates are called: a checked cascade's in
        turn, an agreement cascade's together; None for any other plan."""
        if plan.checks:
            return await self._check(req, plan)
        if plan.agree_policy is not None:
            return await ask_first_stage(self, req, plan)
        return None

    async def _check(self, req: ChatRequest, plan: Plan) -> Checked:
        """Ask each checked model of a cascade in turn (``samples`` answers at once) and keep the
        first answer the policy's scorer trusts: its P(right) from the router's score, the
        answers' length and their agreement (maj@k) must reach the tuned threshold."""
        policy, checked = plan.check_policy, Checked()
        grader = get_grader(policy.grader)
        for name in plan.checks:
            bodies = [sample_body(req.body, i, policy.samples) for i in range(policy.samples)]
            replies = await asyncio.gather(*(self.call_in_order([name], b, False) for b in bodies))
            answered = []
            for _, outcome, attempts in replies:
                checked.attempts += attempts
                if outcome is not None and outcome.kind == "ok":
                    checked.cost = plus(checked.cost, self.account_reply(name, outcome.data))
                    answered.append(outcome.data)
            if not answered:
                checked.steps.append({"model": name, "samples": 0, "outcome": "no answer"})
                continue
            step, checked.answer = judge(policy, grader, plan.score_row, self.selector.router_models, name, answered)
            checked.steps.append(step)
            if checked.answer is not None:
                checked.model = name
                break
        return checked

    def _accepted(self, req: ChatRequest, plan: Plan, route: str, started: float, checked: Checked) -> Response:
        """Answer with the checked model's reply that stood, as JSON or as a stream."""
        data, name = checked.answer, checked.model
        tm.ANSWERS.labels(name).inc()
        headers = self._headers(req, plan, name, checked.attempts, checked, checked.cost)
        data["model"] = name
        data["herd"] = self._meta(req, plan, name, checked.attempts, checked.cost, checked)
        tm.REQUESTS.labels(route, "200").inc()
        tm.REQUEST_SECONDS.labels(route).observe(time.perf_counter() - started)
        self._log_choice(req, plan, route, name, checked.attempts, "200", checked.cost, started, checked)
        if req.stream:
            return StreamingResponse(as_events(data), media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        return Response(json.dumps(data), media_type="application/json", headers=headers)

    def account_reply(self, name: str, data: dict) -> float | None:
        usage = usage_of(data)
        return self._account(name, usage.get("prompt_tokens"), usage.get("completion_tokens"))

    def _account(self, name: str, prompt, completion) -> float | None:
        model = self.backends[name].config
        prompt, completion = token_count(prompt) or 0.0, token_count(completion) or 0.0
        tm.TOKENS.labels(name, "prompt").inc(prompt)
        tm.TOKENS.labels(name, "completion").inc(completion)
        cost = model.cost(prompt, completion)
        if cost is not None:
            tm.COST.labels(name).inc(cost)
        if (tab := TAB.get()) is not None:  # the request's key is charged for every call
            tab.add(name, prompt, completion, cost)
        return cost

    def models(self) -> dict:
        data = [{"id": r, "object": "model", "created": 0, "owned_by": "herd"} for r in self.selector.route_names]
        data += [{"id": m.name, "object": "model", "created": 0, "owned_by": "pool", "tags": list(m.tags),
                  "context_window": m.context_window} for m in self.pool.models]
        return {"object": "list", "data": data}

    def model(self, model_id: str) -> dict:
        found = [m for m in self.models()["data"] if m["id"] == model_id]
        if not found:
            raise GatewayError(404, f"model {model_id!r} is not served here; use one of "
                                    f"{self.selector.route_names + self.selector.names}", param="model",
                               code="model_not_found")
        return found[0]

    def health(self) -> tuple[dict, int]:
        models = {name: b.health() for name, b in self.backends.items()}
        up = sum(h["state"] != "open" for h in models.values())
        status = "ok" if up == len(models) else ("degraded" if up else "down")
        router = self.selector.trained.manifest["router"]["name"] if self.selector.trained else None
        return {"status": status, "version": __version__, "router": router, "models": models}, 200 if up else 503

    async def close(self) -> None:
        await self.shared_health.stop()
        if self.limits is not None:
            await self.limits.close()
        await asyncio.gather(*(b.close() for b in self.backends.values()))
        if self.choice_log is not None:
            self.choice_log.close()
        if self.feedback is not None:
            self.feedback.close()

    async def take_feedback(self, request: Request) -> dict | Response:
        """``POST /v1/feedback`` (gateway/feedback.py says what it takes and answers)."""
        key = self.check_key(request)
        if self.feedback is None:
            raise GatewayError(404, "feedback is off on this gateway; start `herd serve` with --feedback-log FILE to "
                                    "take it", code="feedback_off")
        try:
            raw = await self.read_body(request)
        except ClientDisconnect:
            return Response(status_code=499)
        return await self.feedback.submit(raw, key.name if key is not None else "-")


class StreamCut(Exception):
    """A backend stream that stopped without [DONE] or a finish_reason."""


class _Relay(StreamingResponse):
    """A relayed stream whose ``close`` runs once however it ends: finished, broken, or
    abandoned by the client, even before its first chunk."""

    def __init__(self, events, close, **kwargs):
        super().__init__(events, **kwargs)
        self._close = close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()
            await self._close()


def _header(text: str) -> str:
    """A header value: one line of latin-1."""
    return " ".join(text.splitlines()).encode("latin-1", "replace").decode("latin-1")


def _calls(attempts: list[dict]) -> int:
    return sum("ms" in a for a in attempts)


def _rewrite(event: bytes, name: str, counts: dict, meta: dict | None = None) -> bytes:
    """Relay one SSE event: the answering model's pool name in ``model``, herd's metadata in the
    first chunk, and the token counts noted on the way."""
    text = event.decode("utf-8", "replace")
    if not text.startswith("data:"):
        return event
    payload = text[5:].strip()
    if payload == "[DONE]":
        counts["ended"] = True
    if not payload.startswith("{"):
        return event
    try:
        chunk = read_json(payload)
    except json.JSONDecodeError:
        return event
    if not isinstance(chunk, dict):
        return event
    if "model" in chunk:
        chunk["model"] = name
    if meta is not None:
        chunk["herd"] = meta
    choices = chunk.get("choices")
    for choice in choices if isinstance(choices, list) else []:
        if not isinstance(choice, dict):
            continue
        if choice.get("finish_reason"):
            counts["ended"] = True
        delta = choice.get("delta")
        # A chat chunk's text is in its delta; a completion chunk's in "text".
        content = delta.get("content") if isinstance(delta, dict) else choice.get("text")
        if isinstance(content, str):
            counts["chars"] += len(content)
    usage = chunk.get("usage")
    if isinstance(usage, dict):
        counts["prompt"], counts["completion"] = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if counts["hide_usage"] and "usage" in chunk:  # herd asked for it, the client did not: it never sees it
        del chunk["usage"]
        if not choices and meta is None:
            return b""
    return f"data: {json.dumps(chunk)}\n\n".encode()


async def _unless_disconnected(request: Request, work) -> Response:
    """Run ``work``; if the client goes away first, cancel it (and so the backend call)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(lambda _: task.cancel())  # a callback, not asyncio.wait: no per-request waiter
    try:
        return await task
    except asyncio.CancelledError:
        if not watcher.done() or watcher.cancelled():  # this request itself was cancelled, not the client gone
            raise
        tm.REQUESTS.labels("disconnected", "499").inc()
        return Response(status_code=499)
    finally:
        watcher.cancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def gateway_error(request: Request, e: GatewayError) -> Response:
    """A GatewayError in OpenAI's shape; on a chat request, counted and naming the request."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:  # not a chat request (e.g. /v1/models without a key): herd_requests_total counts chats
        return e.response()
    tm.REQUESTS.labels(getattr(request.state, "route", "rejected"), str(e.status)).inc()
    e.headers.setdefault("x-herd-request-id", rid)
    return e.response()


def not_allowed(request: Request) -> Response:
    return error_response(405, f"method {request.method} is not allowed on {request.url.path}")


class HerdApp(FastAPI):
    """FastAPI, with the endpoints in ``direct`` (path -> its POST route's endpoint) answered
    before its layers: its middleware, routing and dependency solving take more time per request
    than herd's own work. With middleware added, and for the rest of the API, FastAPI answers."""

    direct: dict = {}

    async def __call__(self, scope, receive, send) -> None:
        handler = self.direct.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or self.user_middleware:  # added middleware (e.g. the JSON access log) sees every request
            return await super().__call__(scope, receive, send)
        request = Request(scope, receive, send)
        if request.method != "POST":
            response = not_allowed(request)
        else:
            try:
                response = await handler(request)
            except GatewayError as e:
                response = gateway_error(request, e)
        await response(scope, receive, send)


def create_app(pool: PoolConfig, selector: Selector, api_keys: list[str] | None = None,
               choice_log: str | Path | None = None, log_json: bool = False, *, log_prompts: bool = False,
               feedback_log: str | Path | None = None) -> FastAPI:
    """``log_prompts`` (or the pool's ``gateway.log_prompts``): the choice log keeps the text the
    router scored, except for private requests. ``feedback_log``: POST /v1/feedback appends there."""
    log_ = ChoiceLog(choice_log, session_secret(pool.gateway.session_secret), pool.gateway.log_session_text,
                     log_prompts or pool.gateway.log_prompts) if choice_log else None
    gateway = Gateway(pool, selector, api_keys, log_, log_decisions=log_json, feedback_log=feedback_log)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(selector.warm_up)
        gateway.shared_health.start()
        yield
        await gateway.close()

    # No /openapi.json: herd's API is OpenAI's, and the schema would only map herd for a stranger.
    app = HerdApp(title="herd", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.gateway = gateway
    if log_json:  # herd's access line, with the request id, in place of uvicorn's
        app.add_middleware(AccessLog)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, e: GatewayError):
        return gateway_error(request, e)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):
        message = {404: f"no route {request.url.path}; herd serves /v1/chat/completions, /v1/completions, /v1/models, "
                        "/v1/feedback, /health, /metrics",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(e.status_code, message)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(500, f"internal error in herd ({type(e).__name__}); see the server log")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await gateway.chat(request)

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await gateway.chat(request, parse_completion)

    app.direct = {"/v1/chat/completions": chat_completions, "/v1/completions": completions}

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        return await gateway.take_feedback(request)

    @app.get("/v1/models")
    async def list_models(request: Request):
        gateway.check_key(request)
        return gateway.models()

    @app.get("/v1/models/{model_id:path}")
    async def get_model(request: Request, model_id: str):
        gateway.check_key(request)
        return gateway.model(model_id)

    @app.get("/health")
    async def health(request: Request):
        body, status = gateway.health()
        if not gateway.has_key(request):  # probes need no key; the pool's names and errors do
            body = {"status": body["status"]}
        return JSONResponse(body, status_code=status)

    @app.get("/metrics")
    async def metrics(request: Request):
        if pool.gateway.metrics_need_key:
            gateway.check_key(request)
        body, content_type = tm.exposition()
        return Response(body, media_type=content_type)

    return app


def build_app(pool_path: str | Path, api_keys: list[str] | None = None, choice_log: str | Path | None = None,
              log_json: bool = False, *, log_prompts: bool = False, explore: float | None = None,
              explore_seed: int | None = None, feedback_log: str | Path | None = None) -> FastAPI:
    pool, router_dir = load_pool(pool_path)
    selector = Selector.from_config(pool, router_dir, explore, explore_seed)
    return create_app(pool, selector, api_keys, choice_log, log_json, log_prompts=log_prompts,
                      feedback_log=feedback_log)


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the pool file, key file, logs, log format and exploration come from the environment."""
    env = os.environ
    return build_app(env[ENV_POOL], read_api_keys(env.get(ENV_KEYS_FILE)), env.get(ENV_CHOICE_LOG),
                     env.get(ENV_LOG_FORMAT) == "json", log_prompts=env.get(ENV_LOG_PROMPTS) == "1",
                     explore=float(env[ENV_EXPLORE]) if env.get(ENV_EXPLORE) else None,
                     explore_seed=int(env[ENV_EXPLORE_SEED]) if env.get(ENV_EXPLORE_SEED) else None,
                     feedback_log=env.get(ENV_FEEDBACK_LOG))
