"""The OpenAI-compatible gateway's HTTP side: keys, bodies, plans and limits in; answers, errors
and logs out. Calling the models (retries, circuits, fallbacks) is gateway/dispatch.py, relaying
a stream gateway/relay.py, and one request travels between them as a ``Turn`` (gateway/turn.py).

Nothing a later request needs is kept per request in this process (the conversation in each
request is the whole state), so replicas behind any load balancer behave as one. What must be
shared, keys' limits and spend and backend health, lives in a state store (gateway/state.py).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
import time
import traceback
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Callable

import aiohttp
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from herd import __version__, fastjson
from herd.gateway import telemetry as tm
from herd.gateway.agree import ask_first_stage
from herd.gateway.cascade import as_events, ask_in_turn, plus
from herd.gateway.chat import parse_chat, parse_completion
from herd.gateway.choices import ENV_CHOICE_LOG, ChoiceLog, session_secret
from herd.gateway.dispatch import Dispatcher, calls
from herd.gateway.errors import GatewayError, error_response, relayed_error
from herd.gateway.feedback import ENV_FEEDBACK_LOG, Feedback
from herd.gateway.keys import TAB, ClientKey, Limits, as_keys, read_api_keys
from herd.gateway.relay import Relay, relay
from herd.gateway.selection import Selector
from herd.gateway.state import SharedHealth, make_state
from herd.gateway.turn import Turn
from herd.json_logs import ENV_LOG_FORMAT, AccessLog, decision_log
from herd.pool import PoolConfig, load_pool

log = logging.getLogger("herd.gateway")
ENV_POOL, ENV_KEYS_FILE = "HERD_POOL", "HERD_API_KEYS_FILE"
ENV_LOG_PROMPTS, ENV_EXPLORE, ENV_EXPLORE_SEED = "HERD_LOG_PROMPTS", "HERD_EXPLORE", "HERD_EXPLORE_SEED"


class Gateway:
    """The HTTP side of herd serve: keys, bodies, plans and limits in; answers, errors and logs
    out. Calls go through ``dispatch`` (gateway/dispatch.py), whose backends' HTTP sessions come
    from ``session_factory`` (default: aiohttp's)."""

    def __init__(self, pool: PoolConfig, selector: Selector, api_keys: list[ClientKey | str] | None = None,
                 choice_log: ChoiceLog | None = None, log_decisions: bool = False,
                 feedback_log: str | Path | None = None,
                 session_factory: Callable[[], aiohttp.ClientSession] | None = None):
        self.pool = pool
        self.selector = selector
        self.choice_log = choice_log
        self.log_decisions = log_decisions  # a JSON decision line per request (--log-format json)
        self.keys = as_keys(api_keys)
        self.dispatch = Dispatcher(pool, session_factory)
        self.backends = self.dispatch.backends
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
        request.state.request_id = rid = os.urandom(16).hex()  # as random as a uuid4, for less CPU
        try:
            return await self._chat(request, parse)
        except ClientDisconnect:
            log.info("request %s: the client went away before sending its whole body", rid)
            tm.labelled(tm.REQUESTS, "disconnected", "499").inc()
            return Response(status_code=499)
        except GatewayError:
            raise
        except Exception as e:
            where = traceback.extract_tb(e.__traceback__)[-1]
            # The type and place, not the message: a message may quote the request's text.
            log.error("request %s: unexpected %s at %s:%d (%s)", rid, type(e).__name__, Path(where.filename).name,
                      where.lineno, where.name)
            tm.labelled(tm.REQUESTS, getattr(request.state, "route", "rejected"), "500").inc()
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
            tm.labelled(tm.KEY_REQUESTS, key.name).inc()
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
        turn = Turn(req, plan, route, started)
        if self.limits is not None and self.limits.needs_tab(key):
            turn.tab = await self.limits.admit(key, req, plan)  # a 429 (or 503) before any call
            TAB.set(turn.tab)
        if routed:
            tm.labelled(tm.CHOICES, plan.first).inc()
        tm.IN_FLIGHT.inc()
        streaming = False
        try:
            response = await _unless_disconnected(request, self._answer(turn))
            streaming = isinstance(response, Relay)  # it counts itself out when it closes
            if self.feedback is not None and response.status_code == 200:
                await self.feedback.answered(req.request_id)  # before the client can send feedback on it
            return response
        finally:
            if not streaming:
                self._done(turn)

    async def _answer(self, turn: Turn) -> Response:
        """A cascade's first answers, if its plan has them; else, or if none stood, the
        candidates' in order: as JSON, as a relayed stream, or the backend's error for a
        request every model would refuse."""
        req, plan = turn.req, turn.plan
        if plan.checks:
            turn.first = await ask_in_turn(self.dispatch, req, plan, self.selector.router_models)
        elif plan.agree_policy is not None:
            turn.first = await ask_first_stage(self.dispatch, req, plan)
        if turn.first is not None:
            if turn.first.answer is not None:
                return self._accepted(turn)
            turn.attempts = turn.first.attempts
        try:
            name, outcome, attempts = await self.dispatch.answer(plan.candidates, req.body, req.stream, req.path)
        except GatewayError as e:
            if turn.first is not None:  # the cascade's calls were made too
                e.headers["x-herd-attempts"] = str(calls(turn.attempts) + int(e.headers.get("x-herd-attempts", 0)))
            self._log_choice(turn, str(e.status))
            raise
        turn.answered_by(name, attempts)
        if outcome.kind == "client":
            tm.labelled(tm.REQUESTS, turn.route, str(outcome.status)).inc()
            self._log_choice(turn, str(outcome.status))
            return Response(relayed_error(outcome.status, outcome.body, self.secrets), status_code=outcome.status,
                            media_type="application/json", headers=turn.headers())
        tm.labelled(tm.ANSWERS, name).inc()
        if req.stream:
            return relay(turn, outcome, self.dispatch, self._ended)
        data = outcome.data
        cost = self.dispatch.account_reply(name, data)
        turn.cost = plus(cost, turn.first.cost) if turn.first is not None else cost
        return self._reply(turn, data)

    def _accepted(self, turn: Turn) -> Response:
        """Answer with the reply of the cascade's first answers that stood."""
        first = turn.first
        turn.model, turn.attempts, turn.cost = first.model, first.attempts, first.cost
        tm.labelled(tm.ANSWERS, first.model).inc()
        return self._reply(turn, first.answer)

    def _reply(self, turn: Turn, data: dict) -> Response:
        """A whole answer, as JSON or, when a stream was asked for, as one."""
        data["model"] = turn.model
        data["herd"] = turn.meta()
        headers = turn.headers()
        tm.labelled(tm.REQUESTS, turn.route, "200").inc()
        tm.labelled(tm.REQUEST_SECONDS, turn.route).observe(time.perf_counter() - turn.started)
        self._log_choice(turn, "200")
        if turn.req.stream:
            return StreamingResponse(as_events(data), media_type="text/event-stream",
                                     headers={**headers, "cache-control": "no-cache"})
        return Response(fastjson.dumps(data), media_type="application/json", headers=headers)

    def _log_choice(self, turn: Turn, status: str) -> None:
        if self.choice_log is None and not self.log_decisions:
            return
        record = turn.record(status)
        if self.choice_log is not None:
            req = turn.req
            self.choice_log.write(record, req.session, req.options.private, req.router_text)
        if self.log_decisions:  # no session here: the choice log's keyed hash is its own to give
            decision_log.info("decision", extra={"fields": record})

    def _ended(self, turn: Turn, status: str) -> None:
        """A relayed stream has closed: count it, log it, and end the request."""
        tm.labelled(tm.REQUESTS, turn.route, status).inc()
        self._log_choice(turn, status)
        tm.labelled(tm.REQUEST_SECONDS, turn.route).observe(time.perf_counter() - turn.started)
        self._done(turn)

    def _done(self, turn: Turn) -> None:
        tm.IN_FLIGHT.dec()
        if turn.tab is not None:
            self.limits.settle(turn.tab)

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
        await self.dispatch.close()
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


async def _unless_disconnected(request: Request, work) -> Response:
    """Await ``work``; if the client goes away first, cancel it (and so the backend call). It runs
    in this task: a task of its own per request costs more than the cancellation's bookkeeping."""
    task, state = asyncio.current_task(), {"running": True, "cancelled": False}

    def client_gone(watcher: asyncio.Future) -> None:
        if state["running"] and not watcher.cancelled():
            state["cancelled"] = True
            task.cancel()

    watcher = asyncio.ensure_future(_disconnected(request))
    watcher.add_done_callback(client_gone)  # a callback, not asyncio.wait: no per-request waiter
    try:
        return await work
    except asyncio.CancelledError:
        if not state["cancelled"]:  # this request itself was cancelled (e.g. shutdown), not the client gone
            raise
        tm.labelled(tm.REQUESTS, "disconnected", "499").inc()
        return Response(status_code=499)
    finally:
        state["running"] = False
        watcher.cancel()
        # Python 3.11+: the cancellation this function asked for is settled here (answered 499, or
        # swallowed inside the work, e.g. by a wait_for that finished at that moment), so later
        # awaits in this task do not see it as pending.
        if state["cancelled"] and hasattr(task, "uncancel"):
            task.uncancel()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def gateway_error(request: Request, e: GatewayError) -> Response:
    """A GatewayError in OpenAI's shape; on a chat request, counted and naming the request."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:  # not a chat request (e.g. /v1/models without a key): herd_requests_total counts chats
        return e.response()
    tm.labelled(tm.REQUESTS, getattr(request.state, "route", "rejected"), str(e.status)).inc()
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
               feedback_log: str | Path | None = None,
               session_factory: Callable[[], aiohttp.ClientSession] | None = None,
               freeze_heap: bool = False) -> FastAPI:
    """``log_prompts`` (or the pool's ``gateway.log_prompts``): the choice log keeps the text the
    router scored, except for private requests. ``feedback_log``: POST /v1/feedback appends there.
    ``session_factory``: each backend's HTTP session (default: aiohttp's; anything with its
    ``post`` and ``close`` will do, e.g. one that calls apps in this process). ``freeze_heap``:
    the process is the server's own, so what start-up loaded is set aside from garbage collection."""
    log_ = ChoiceLog(choice_log, session_secret(pool.gateway.session_secret), pool.gateway.log_session_text,
                     log_prompts or pool.gateway.log_prompts) if choice_log else None
    gateway = Gateway(pool, selector, api_keys, log_, log_decisions=log_json, feedback_log=feedback_log,
                      session_factory=session_factory)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(selector.warm_up)
        if freeze_heap:
            # What is loaded by now (the router, the libraries) lives as long as the server: out of
            # the collector's sight, a full collection no longer scans it. With a TF-IDF router
            # loaded each one took ~0.3 s of CPU, some 0.1 ms per request on average, and a
            # stall of that length for the requests in flight.
            gc.collect()
            gc.freeze()
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
              explore_seed: int | None = None, feedback_log: str | Path | None = None,
              freeze_heap: bool = False) -> FastAPI:
    pool, router_dir = load_pool(pool_path)
    selector = Selector.from_config(pool, router_dir, explore, explore_seed)
    return create_app(pool, selector, api_keys, choice_log, log_json, log_prompts=log_prompts,
                      feedback_log=feedback_log, freeze_heap=freeze_heap)


def app_from_env() -> FastAPI:
    """Factory for uvicorn workers: the pool file, key file, logs, log format and exploration come from the environment."""
    env = os.environ
    return build_app(env[ENV_POOL], read_api_keys(env.get(ENV_KEYS_FILE)), env.get(ENV_CHOICE_LOG),
                     env.get(ENV_LOG_FORMAT) == "json", log_prompts=env.get(ENV_LOG_PROMPTS) == "1",
                     explore=float(env[ENV_EXPLORE]) if env.get(ENV_EXPLORE) else None,
                     explore_seed=int(env[ENV_EXPLORE_SEED]) if env.get(ENV_EXPLORE_SEED) else None,
                     feedback_log=env.get(ENV_FEEDBACK_LOG), freeze_heap=True)
