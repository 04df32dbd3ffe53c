"""A transport for herd's backends inside the test process: ``AppSession`` is the part of
aiohttp's ClientSession that ``backends.Backend`` uses (``post`` and ``close``), calling ASGI apps
(fake_backend.make_app) picked by the URL's host, so the gateway runs through ``create_app``
without a socket. Each chunk an app sends arrives as it is sent, so streams stream; an app that
fails before its answer starts is a dropped connection, one that fails after a broken payload."""

from __future__ import annotations

import asyncio
import urllib.parse

import aiohttp
from multidict import CIMultiDict

_END = object()  # the app returned


class AppSession:
    def __init__(self, apps: dict):
        self.apps = apps  # host -> ASGI app
        self.running: set[asyncio.Task] = set()

    async def post(self, url: str, data: bytes, headers: dict | None = None) -> AppResponse:
        parts = urllib.parse.urlsplit(url)
        app = self.apps.get(parts.hostname)
        if app is None:
            raise aiohttp.ClientConnectionError(f"no app serves {parts.hostname}")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": parts.path, "raw_path": parts.path.encode(),
                 "query_string": parts.query.encode(), "server": (parts.hostname, 80), "client": ("127.0.0.1", 1),
                 "headers": [(b"host", parts.hostname.encode()),
                             *((k.lower().encode(), v.encode()) for k, v in (headers or {}).items())]}
        messages: asyncio.Queue = asyncio.Queue()
        body = [{"type": "http.request", "body": data, "more_body": False}]

        async def receive() -> dict:
            if body:
                return body.pop()
            await asyncio.Event().wait()  # the client never leaves first; closing cancels the app

        async def run() -> None:
            try:
                await app(scope, receive, messages.put)
                await messages.put(_END)
            except Exception as e:
                await messages.put(e)

        task = asyncio.ensure_future(run())
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        start = await messages.get()
        if not isinstance(start, dict):
            raise aiohttp.ServerDisconnectedError()
        return AppResponse(start, messages, task)

    async def close(self) -> None:
        for task in list(self.running):
            task.cancel()
        await asyncio.gather(*self.running, return_exceptions=True)


class AppResponse:
    def __init__(self, start: dict, messages: asyncio.Queue, task: asyncio.Task):
        self.status = start["status"]
        self.headers = CIMultiDict((k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", []))
        self.content = self  # aiohttp reads a stream as response.content.iter_any()
        self._messages, self._task, self._done = messages, task, False

    async def iter_any(self):
        while not self._done:
            message = await self._messages.get()
            if not isinstance(message, dict):  # ended or failed before its last chunk
                raise aiohttp.ClientPayloadError("the app ended its answer before its last chunk")
            self._done = not message.get("more_body", False)
            if message.get("body"):
                yield message["body"]

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.iter_any()])

    def release(self) -> None:
        self.close()

    def close(self) -> None:
        self._task.cancel()
