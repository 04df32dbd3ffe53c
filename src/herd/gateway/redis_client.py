"""The gateway's Redis calls through redis-py's asyncio client, in the two shapes gateway/state.py
uses: ``await client.pipeline([(cmd, *args), ...])`` gives the replies in order, an error reply
(e.g. NOSCRIPT after a restart) as a ``ReplyError`` in its place, in one round trip; ``await
client.call(cmd, *args)`` gives one reply and raises an error reply. A connection that fails or
does not answer within ``timeout`` s raises an OSError (ConnectionError, TimeoutError), so
callers tell "Redis said no" from "Redis is not there" without knowing the client's types."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError
from redis.exceptions import ResponseError as ReplyError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["RedisClient", "ReplyError", "NoScriptError"]

MAX_CONNECTIONS = 64  # per process; calls beyond wait for one (up to the timeout)


class RedisClient:
    def __init__(self, url: str, timeout: float = 0.5):
        """``url``: redis://[USER[:PASSWORD]@]HOST[:PORT][/DB], rediss://... (TLS) or unix://PATH;
        a ValueError names what the client cannot read."""
        if not url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("expected redis://HOST:PORT/DB (or rediss://, unix://)")
        db = urlsplit(url).path.strip("/")
        if not url.startswith("unix://") and db and not db.isdigit():  # redis-py would quietly use database 0
            raise ValueError(f"database {db!r} is not a number")
        # Short timeouts and one quick retry (a pooled connection Redis closed on restart): an
        # unreachable Redis must cost a request milliseconds, not the client's default seconds.
        # A bounded pool that makes a burst wait for a connection rather than fail.
        pool = aioredis.BlockingConnectionPool.from_url(
            url, max_connections=MAX_CONNECTIONS, timeout=timeout, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1), decode_responses=True)
        self.redis = aioredis.Redis(connection_pool=pool)

    async def call(self, *command):
        try:
            return await self.redis.execute_command(*command)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise _unreachable(e) from None

    async def pipeline(self, commands: list[tuple]) -> list:
        if not commands:
            return []
        if len(commands) == 1:  # one command costs ~0.1 ms less CPU than a pipeline of one
            try:
                return [await self.call(*commands[0])]
            except ReplyError as e:
                return [e]
        pipe = self.redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        try:
            return await pipe.execute(raise_on_error=False)
        except (RedisConnectionError, RedisTimeoutError) as e:
            raise _unreachable(e) from None

    async def close(self) -> None:
        await self.redis.aclose(close_connection_pool=True)


def _unreachable(e: Exception) -> OSError:
    return (TimeoutError if isinstance(e, RedisTimeoutError) else ConnectionError)(str(e) or type(e).__name__)
