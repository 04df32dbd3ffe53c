"""A backend's stream relayed to the client: each SSE event with the pool's model name, herd's
metadata in the first, the tokens noted on the way and counted when it ends, and an error event
if the backend breaks it after it began (bytes already sent leave no room to fall back)."""

from __future__ import annotations

import json
from typing import Callable

from starlette.responses import StreamingResponse

from herd.backends import Outcome, read_json
from herd.gateway import telemetry as tm
from herd.gateway.cascade import plus
from herd.gateway.chat import CHARS_PER_TOKEN_COST
from herd.gateway.dispatch import Dispatcher
from herd.gateway.errors import error_body
from herd.gateway.turn import Turn


class StreamCut(Exception):
    """A backend stream that stopped without [DONE] or a finish_reason."""


class Relay(StreamingResponse):
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


def relay(turn: Turn, outcome: Outcome, dispatch: Dispatcher, ended: Callable[[Turn, str], None]) -> Relay:
    """The response relaying ``outcome``'s stream from ``turn.model``. When it closes, the call is
    counted (by its usage, else its length) into ``turn.cost`` and ``ended(turn, status)`` runs:
    status "200" for a finished stream, "502" for a broken one, "499" for one the client left."""
    name, req = turn.model, turn.req
    state = {"chars": 0, "prompt": None, "completion": None, "status": "200", "finished": False, "ended": False,
             "hide_usage": not req.wants_usage}
    meta, headers = turn.meta(), turn.headers()

    async def events():
        try:
            yield rewrite(outcome.first_event, name, state, meta)
            async for event in outcome.events:
                if chunk := rewrite(event, name, state):
                    yield chunk
            if not state["ended"]:  # closed without [DONE] or a finish_reason: a cut, not an end
                raise StreamCut()
            state["finished"] = True
        except Exception as e:  # aiohttp's errors, a timeout, or a chunk too malformed to relay
            # Bytes already reached the client, so no fallback: end the stream with an error event.
            state["status"] = "502"
            tm.labelled(tm.ATTEMPT_ERRORS, name, "stream broken").inc()
            message = f"backend {name} broke the stream after it began ({type(e).__name__})"
            yield f"data: {json.dumps(error_body(502, message, code='stream_broken'))}\n\n".encode()

    async def close() -> None:
        await dispatch.backends[name].finish(outcome, state["finished"])
        completion = state["completion"] or state["chars"] / CHARS_PER_TOKEN_COST
        cost = dispatch.account(name, state["prompt"] or req.prompt_tokens_estimate(), completion)
        turn.cost = plus(cost, turn.first.cost) if turn.first is not None else cost
        ended(turn, state["status"] if state["finished"] or state["status"] != "200" else "499")

    return Relay(events(), close, media_type="text/event-stream", headers={**headers, "cache-control": "no-cache"})


def rewrite(event: bytes, name: str, counts: dict, meta: dict | None = None) -> bytes:
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
