"""`herd spend`: the spend ledger per client key, model and UTC day, read from the shared state
store (Redis), or rebuilt from a choice log when there is none."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from herd.errors import HerdError
from herd.gateway.redis_client import ReplyError
from herd.gateway.state import LEDGER_FIELDS, RedisState
from herd.jsonl import read_text

COLUMNS = ("key", "model", "day", *LEDGER_FIELDS)


class LedgerError(HerdError, ValueError):
    """The ledger cannot be read from where it was asked for; the message says where and why."""


def ledger_from_state(url: str) -> list[dict]:
    """The Redis ledger: every backend call's cost and tokens, per key, model and day."""
    async def read() -> list[dict]:
        state = RedisState(url)
        try:
            return await state.ledger()
        finally:
            await state.redis.close()

    try:
        return asyncio.run(read())
    except (ReplyError, OSError) as e:
        raise LedgerError(f"cannot read the ledger at {url.rpartition('@')[2]}: {e}") from None


def ledger_from_choice_log(path: str | Path) -> list[dict]:
    """The ledger as a choice log tells it: one line per request, its whole cost (a cascade's
    calls included) under the model that answered ('-' when none did); no token counts."""
    cells: dict[tuple, dict] = {}
    p = Path(path)
    lines = read_text(p, LedgerError, "choice log").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            day = time.strftime("%Y-%m-%d", time.gmtime(float(r["time"])))
        except (ValueError, KeyError, TypeError):
            raise LedgerError(f"{p}:{n}: not a choice log record") from None
        cell = cells.setdefault((r.get("key") or "-", r.get("model") or "-", day),
                                {"usd": 0.0, "calls": 0, "prompt_tokens": None, "completion_tokens": None})
        cell["usd"] += r.get("cost_usd") or 0.0
        cell["calls"] += int(r.get("calls") or 0)
    return [{"key": k, "model": m, "day": d, **v} for (k, m, d), v in sorted(cells.items(), key=lambda kv: (kv[0][2], kv[0][0], kv[0][1]))]
