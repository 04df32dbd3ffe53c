"""The floor of herd's serving stack: an ASGI app under uvicorn (uvloop, httptools) that relays a
chat request's body to one backend with one pooled aiohttp session and returns its reply, and
nothing else (no parsing, routing, checks, metrics or logs). `benchmarks/gateway.py --floor`
serves it beside herd, so the part of herd's added latency that is its own work and the part
any gateway on this stack pays can be told apart.

    python benchmarks/floor_proxy.py --port PORT --backend http://127.0.0.1:PORT/v1
"""

from __future__ import annotations

import argparse

import aiohttp
import uvicorn


def make_app(backend: str):
    session: aiohttp.ClientSession | None = None

    async def app(scope, receive, send):
        nonlocal session
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            return await send({"type": "lifespan.shutdown.complete"})
        if scope["path"] == "/health":
            return await _reply(send, 200, b'{"status": "ok"}')
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        if session is None:  # made on the server's own loop
            session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        async with session.post(f"{backend}/chat/completions", data=body,
                                headers={"content-type": "application/json"}) as r:
            await _reply(send, r.status, await r.read())

    return app


async def _reply(send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", required=True, help="the backend's base URL, ending in /v1")
    args = ap.parse_args()
    uvicorn.run(make_app(args.backend.rstrip("/")), host="127.0.0.1", port=args.port, log_level="warning",
                http="httptools", loop="uvloop", access_log=False)


if __name__ == "__main__":
    main()
