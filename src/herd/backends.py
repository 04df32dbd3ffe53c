"""One pool model's OpenAI-compatible backend: its HTTP client, a bound on calls in flight, and a
circuit breaker. The gateway and collection both call models through it.

A call ends in one of seven ways (``Outcome.kind``): ``ok``; ``busy`` (no slot within the wait
asked for: not called); ``transient`` (connection failed, 408, 409, 429, 5xx, an unreadable
answer: worth calling again after a pause); ``timeout`` (no answer within ``timeout_s``);
``refused`` (the backend refused herd's credentials or model id: 401, 403, 404); ``too_long``
(the backend says the conversation exceeds its context: a model with a larger window may take
it); ``client`` (any other 4xx: the request itself is wrong, so every backend would refuse it
and the error goes back to the caller). Which of them are called again, and when, is the
caller's ``retry.RetryPolicy``.

The HTTP client comes from ``session_factory`` (default: an aiohttp session per backend), so
the gateway can also be run against backends in the same process.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import math
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

from herd import fastjson
from herd.pool import GatewaySettings, ModelConfig

TRANSIENT_STATUS = {408, 409, 429}  # and every 5xx
REFUSED_STATUS = {401, 403, 404}


@dataclass
class Outcome:
    kind: str  # ok | busy | transient | timeout | refused | too_long | client
    detail: str  # e.g. "ok", "http 503", "connect error", "read timeout"
    status: int | None = None
    response: aiohttp.ClientResponse | None = None  # open when a stream succeeded
    body: bytes = b""  # failures: the backend's error body
    data: dict | None = None  # non-stream success: the parsed answer
    retry_after: float | None = None
    first_event: bytes = b""  # streams: the first SSE event, read before committing
    events: object = None  # streams: async iterator over the remaining SSE events


@dataclass
class Circuit:
    """Closed until ``failures`` calls in a row fail; then open for ``cooldown_s``; then one trial
    call (half-open) closes it again or reopens it."""

    failures: int
    cooldown_s: float
    consecutive: int = 0
    opened_at: float | None = None
    trial: bool = False
    opens: int = field(default=0)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if time.monotonic() - self.opened_at >= self.cooldown_s else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def succeeded(self) -> None:
        self.consecutive, self.opened_at, self.trial = 0, None, False

    def failed(self) -> None:
        self.consecutive += 1
        if self.trial or self.consecutive >= self.failures:
            if self.opened_at is None or self.trial:
                self.opens += 1
            self.opened_at, self.trial = time.monotonic(), False


class Backend:
    def __init__(self, config: ModelConfig, settings: GatewaySettings,
                 session_factory: Callable[[], aiohttp.ClientSession] | None = None):
        self.config = config
        self.headers = {**config.extra_headers, "content-type": "application/json"}
        key = config.api_key()
        if key:
            self.headers[config.api_key_header or "authorization"] = key if config.api_key_header else f"Bearer {key}"
        self.query = f"?{urllib.parse.urlencode(config.extra_query)}" if config.extra_query else ""
        # Anything with aiohttp.ClientSession's post and close will do. The default session sends
        # the headers (the backend's key) itself; another is given them with each call.
        self.session_factory = session_factory or self._new_session
        self.call_headers = None if session_factory is None else self.headers
        self.session: aiohttp.ClientSession | None = None  # made on first use, inside the event loop
        self.slots = asyncio.Semaphore(config.max_concurrency)
        self.circuit = Circuit(settings.circuit_failures, settings.circuit_cooldown_s)
        self.in_flight = 0
        self.calls = 0
        self.last_error: str | None = None

    def _new_session(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.config.max_concurrency),
            # sock_connect, not connect: waiting for a pooled connection is not a connect failure.
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.config.connect_timeout_s,
                                          sock_read=self.config.timeout_s),
            headers=self.headers, auto_decompress=True, trust_env=not _loopback(self.config.base_url),
        )

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.session = self.session_factory()
        return self.session

    async def call(self, body: dict, stream: bool = False, path: str = "/chat/completions",
                   slot_wait_s: float | None = None) -> Outcome:
        """One call to ``path`` (``/chat/completions`` or ``/completions``). For a stream that succeeds, the response stays open and the first SSE event
        has been read, so a failure before the first byte can still fall back; the stream holds
        its slot until ``finish``. With ``slot_wait_s``, a backend at ``max_concurrency`` for that
        long is not called: the outcome is ``busy`` (the gateway tries the next model)."""
        fields = {**self.config.extra_body, **body, "model": self.config.backend_model}
        if stream and self.config.stream_usage:  # the cost of a stream from its usage, not its length
            fields["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        payload = fastjson.dumps(fields)
        if slot_wait_s is None or not self.slots.locked():  # a free slot: no timer to set
            await self.slots.acquire()
        else:
            try:
                await asyncio.wait_for(self.slots.acquire(), slot_wait_s)
            except asyncio.TimeoutError:
                return Outcome("busy", f"busy: {self.config.max_concurrency} calls in flight for {slot_wait_s:g} s")
        self.in_flight += 1
        self.calls += 1
        outcome = None
        try:
            outcome = await self._send(self.config.base_url + path + self.query, payload, stream)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # an answer so malformed that reading it failed: the backend's fault
            outcome = Outcome("transient", f"unreadable answer ({type(e).__name__})", 200)
        finally:
            if outcome is None:
                self.circuit.trial = False  # a cancelled trial call proves nothing either way
            if outcome is None or outcome.response is None:
                self._free()
        if outcome.kind in ("ok", "client", "too_long"):  # the backend is up and answering
            self.circuit.succeeded()
        else:
            self.circuit.failed()
            self.last_error = outcome.detail
        return outcome

    async def finish(self, outcome: Outcome, completed: bool) -> None:
        """End a relayed stream: a completed one hands its connection back, any other closes it."""
        await outcome.events.aclose()
        outcome.response.release() if completed else outcome.response.close()
        self._free()

    def _free(self) -> None:
        self.in_flight -= 1
        self.slots.release()

    async def _send(self, url: str, payload: bytes, stream: bool) -> Outcome:
        response = None
        try:
            response = await self._session().post(url, data=payload, headers=self.call_headers)
            if response.status != 200:
                body = await response.read()
                response.release()
                return _http_failure(response, body)
            if not stream:
                raw = await response.read()
                response.release()
                try:
                    data = read_json(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    return Outcome("transient", "answer is not JSON", 200)
                if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
                    return Outcome("transient", "answer has no choices", 200)
                return Outcome("ok", "ok", 200, data=data)
            events = sse_events(response)
            first = await anext(events, None)
            while first is not None and not _has_data(first):  # keep-alive comments commit nothing
                first = await anext(events, None)
            if first is None:
                response.close()
                return Outcome("transient", "stream ended before any data", 200)
            return Outcome("ok", "ok", 200, response=response, first_event=first, events=events)
        except aiohttp.ConnectionTimeoutError:
            return _closed(response, Outcome("transient", "connect timeout"))
        except (aiohttp.ServerTimeoutError, asyncio.TimeoutError):
            return _closed(response, Outcome("timeout", "read timeout"))
        except aiohttp.ClientError as e:
            return _closed(response, Outcome("transient", f"connection error ({type(e).__name__})"))
        except BaseException:
            if response is not None:
                response.close()
            raise

    def health(self) -> dict:
        c = self.circuit
        return {"state": c.state, "consecutive_failures": c.consecutive, "times_opened": c.opens,
                "in_flight": self.in_flight, "calls": self.calls, "last_error": self.last_error}

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _loopback(url: str) -> bool:
    """A backend on this host: never reached through HTTP(S)_PROXY, which is for the way out
    (other backends honour it, and NO_PROXY)."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _closed(response: aiohttp.ClientResponse | None, outcome: Outcome) -> Outcome:
    if response is not None:
        response.close()
    return outcome


def _http_failure(response: aiohttp.ClientResponse, body: bytes) -> Outcome:
    status = response.status
    detail = f"http {status}"
    if status in TRANSIENT_STATUS or status >= 500:
        return Outcome("transient", detail, status, body=body, retry_after=_retry_after(response.headers.get("retry-after")))
    if status in REFUSED_STATUS:
        return Outcome("refused", detail, status, body=body)
    if status == 413 or b"context_length" in body or b"context length" in body.lower():
        # Too long for this model: a model with a larger window may still take it.
        return Outcome("too_long", f"{detail} (too long for this model)", status, body=body)
    return Outcome("client", detail, status, body=body)


def token_count(value) -> float | None:
    """A token count from a backend's ``usage``, which may hold anything: a number from 0 to 10**12
    (no call is larger; 1e999 or 10**400 would make the counters infinite) or None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1e12
    return float(value) if ok else None


def read_json(raw: bytes | str):
    """A backend's JSON with non-finite numbers (1e999, NaN, Infinity) read as null, so none is
    counted or relayed (Infinity is not JSON a client can read)."""
    return json.loads(raw, parse_constant=lambda _: None, parse_float=lambda t: v if math.isfinite(v := float(t)) else None)


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


async def sse_events(response: aiohttp.ClientResponse):
    """Server-sent events of a response, each as the raw bytes of its lines plus the blank line."""
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while True:
            end = _event_end(buffer)
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end:]
            yield event
    if buffer.strip():
        yield buffer


def _has_data(event: bytes) -> bool:
    return any(line.startswith(b"data:") for line in event.splitlines())


def _event_end(buffer: bytes) -> int:
    """Index just past the first event's terminating blank line, or -1."""
    ends = [i + len(sep) for sep in (b"\n\n", b"\r\n\r\n") if (i := buffer.find(sep)) >= 0]
    return min(ends) if ends else -1
