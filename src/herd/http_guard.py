"""Bounds on what a client can hold before herd sees its request: uvicorn's HTTP protocol with a
limit on the request head's size, deadlines for the head and the body, and a cap on open
connections per worker. Without them a client that never finishes its headers (or its body)
keeps its connection and its buffered bytes for as long as it likes, before any API key is checked.

It lives outside ``herd.gateway`` on purpose: uvicorn's worker processes unpickle the protocol
before they answer the supervisor's health pings, and importing the gateway package there
(FastAPI, numpy, the routers) takes long enough for a worker to be taken for hung."""

from __future__ import annotations

import functools
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from herd.pool import GatewaySettings

log = logging.getLogger("herd.gateway")


class GuardedProtocol(HttpToolsProtocol):
    def __init__(self, *args, max_header_bytes: int, header_timeout_s: float, body_timeout_s: float,
                 max_connections: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_header_bytes, self.max_connections = max_header_bytes, max_connections
        self.header_timeout_s, self.body_timeout_s = header_timeout_s, body_timeout_s
        self._head_bytes = 0
        self._in_head = True
        self._deadline = None

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            return self._refuse(503, "too many connections")
        self._arm(self.header_timeout_s, "request head")

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._refuse(431, "request head too large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes = True, 0

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._arm(self.body_timeout_s, "request body")
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():  # a kept-alive connection: the next head has its deadline too
            self._in_head, self._head_bytes = True, 0
            self._arm(self.header_timeout_s, "request head")

    def _arm(self, seconds: float, what: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._too_slow, what, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self, what: str, seconds: float) -> None:
        log.info("closed a connection from %s: %s not received within %g s", _peer(self.client), what, seconds)
        if what == "request head":
            self._refuse(408, f"{what} not received within {seconds:g} s")
        else:  # the request is with the app already: cut the connection, the app sees a disconnect
            self.transport.close()

    def _refuse(self, status: int, reason: str) -> None:
        """Answer a request herd will not read, and close the connection."""
        self._disarm()
        phrase = {408: "Request Timeout", 431: "Request Header Fields Too Large", 503: "Service Unavailable"}[status]
        body = f'{{"error": {{"message": "{reason}", "type": "invalid_request_error", "param": null, "code": null}}}}'
        self.transport.write(f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
                             f"content-length: {len(body)}\r\nconnection: close\r\n\r\n{body}".encode())
        self.transport.close()


class NoQueryString(logging.Filter):
    """uvicorn's access log without query strings: herd reads none, and a key a client put there
    must not land in the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and len(record.args) == 5:  # (client, method, path, version, status)
            args = list(record.args)
            args[2] = str(args[2]).split("?", 1)[0]
            record.args = tuple(args)
        return True


def _peer(client) -> str:
    return "%s:%d" % client if client else "?"


def http_protocol(settings: GatewaySettings):
    """What ``uvicorn.run(http=...)`` takes: the guarded protocol with the pool's limits (a partial,
    so it pickles to worker processes)."""
    return functools.partial(GuardedProtocol, max_header_bytes=int(settings.max_header_kb * 1024),
                             header_timeout_s=settings.header_timeout_s, body_timeout_s=settings.body_timeout_s,
                             max_connections=settings.max_connections)
