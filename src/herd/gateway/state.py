"""What the gateway's processes share: rate-limit windows, budget counters, the spend ledger and
backend health. One small interface, two stores: ``LocalState`` (this process's memory, the
default: nothing to run) and ``RedisState`` (one Redis for every worker and replica, so N of
them enforce one limit and learn from each other's failing backends).

In Redis every update is one Lua script, so no read-modify-write can interleave. A request
costs one round trip on its path, the admission, unless its key is busy in this process: then
an admission takes a ``Lease`` of slots and budget that admits the next requests here without
a round trip, and what it leaves goes back when it ends (``LEASE_S``). A charge, settled after
the answer has been sent, rides with the next admission's round trip (or goes alone after
``SETTLE_DELAY_S``).
A charge carries its request id and is written at most once, so a charge retried after a lost
reply is not counted twice; charges that could not be written wait in memory and are written
when Redis is back. While Redis is unreachable, ``fail: open`` serves with this process's own
limits and ``fail: closed`` refuses limited requests with a 503.

Keys (prefix ``herd:``): ``rpm:NAME`` (sorted set of admission times), ``tokens:NAME`` (hash:
tokens per second of the last 60 s, their ``sum`` and the ``first`` second, so an admission
reads two fields and the seconds only when one leaves the window), ``budget:NAME:d:DAY`` and
``budget:NAME:m:MONTH`` (hash: spent, held), ``ledger:DAY`` (hash:
``NAME<TAB>MODEL<TAB>usd|calls|prompt_tokens|completion_tokens``), ``ledger:days``,
``charged:REQUEST_ID``, ``lease:ID`` (what a lease was granted, until it goes back),
``circuit:MODEL`` (open until, epoch ms), ``answered:REQUEST_ID`` (a request answered with 200,
for the feedback window: "0", then "1" once it has feedback)."""

from __future__ import annotations

import asyncio
import calendar
import hashlib
import logging
import os
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from herd.errors import UsageError
from herd.gateway import telemetry as tm
from herd.gateway.redis_client import NoScriptError, RedisClient, ReplyError

if TYPE_CHECKING:
    from herd.backends import Backend
    from herd.gateway.keys import ClientKey
    from herd.pool import GatewaySettings

log = logging.getLogger("herd.gateway")
ENV_STATE_URL = "HERD_STATE_URL"
WINDOW_S = 60.0
HEALTH_SYNC_S = 0.25  # how often each process shares circuit changes and probes an unreachable Redis
CHARGED_TTL_S = 7 * 86400  # how long a request id is remembered as charged
SETTLE_BATCH = 256  # charges sent to Redis in one round trip at most
# How long an answered request's charge waits for this process's next admission to carry it to
# Redis (no round trip of its own) before it is sent alone.
SETTLE_DELAY_S = 0.025
# A budget refusal while holds are on the budget is checked once more after this long: a hold may
# be an answered request's whose charge is on its way, or a lease's, in this process or another.
HELD_RECHECK_S = 0.15  # more than LEASE_S + SETTLE_DELAY_S
# Answered request ids one process remembers for feedback at most (~150 MB); the oldest go first.
LOCAL_ANSWERED = 1_000_000
# A key busy in this process takes a lease: rpm slots and budget for about twice its requests of
# the last LEASE_S, used within LEASE_S with no round trip; what it does not use goes back. At most
# LEASE_SHARE of the rpm (and LEASE_SLOTS slots) and LEASE_BUDGET_SHARE of a budget at once, so
# other processes are not starved (and a killed process strands little budget); an idle key's
# lease is one request's, which is the admission itself.
LEASE_S = 0.1
LEASE_SHARE = 0.1
LEASE_BUDGET_SHARE = 0.01
LEASE_SLOTS = 1000


class StateDown(Exception):
    """The shared store is unreachable and the gateway fails closed."""


@dataclass
class Refusal:
    limit: str  # rpm | tpm | day | month
    retry_after_s: float
    used: float = 0.0  # budgets: spent plus held


@dataclass
class Charge:
    """What one request spent, per model; ``worst`` was held at admission by ``held_by``."""

    name: str
    request_id: str
    worst: float
    held_by: str | None
    usd: dict[str, float]
    calls: dict[str, int]
    tokens: dict[str, tuple[float, float]]
    day: str = ""
    month: str = ""

    @property
    def total_usd(self) -> float:
        return sum(self.usd.values())

    @property
    def total_tokens(self) -> int:
        return round(sum(p + c for p, c in self.tokens.values()))


def periods(now: float | None = None) -> tuple[str, str]:
    """The UTC day and month budgets are counted in."""
    t = time.gmtime(now)
    return time.strftime("%Y-%m-%d", t), time.strftime("%Y-%m", t)


def until_next(period: str, now: float | None = None) -> float:
    """Seconds until the next UTC day or month begins."""
    now = time.time() if now is None else now
    t = time.gmtime(now)
    if period == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0)) + 86400
    else:
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        start = calendar.timegm((year, month, 1, 0, 0, 0))
    return start - now


class State:
    """The interface. ``admit`` checks a limited key's limits and, if they allow, counts the
    request and holds ``worst`` against its budgets; ``settle`` replaces the hold with what was
    spent and writes the ledger; ``share_health`` publishes circuits opened and closed here and
    returns every model's shared open-until (epoch seconds)."""

    ledger_kept = False  # whether every request's spend is written to a ledger `herd spend` reads

    async def admit(self, key: ClientKey, worst: float, request_id: str, day: str,
                    month: str) -> tuple[Refusal | None, str | None]:
        raise NotImplementedError

    def settle(self, charge: Charge) -> None:
        """Counted at once here; written to a shared store off the request's path."""
        raise NotImplementedError

    async def share_health(self, opened: dict[str, float], closed: list[str]) -> dict[str, float]:
        return {}

    async def remember_answered(self, request_id: str, ttl_s: float) -> None:
        """Note a request answered with status 200, which may get feedback for ``ttl_s``."""
        raise NotImplementedError

    async def claim_feedback(self, request_id: str) -> str:
        """'ok' (and from now on 'repeat'), 'repeat', or 'unknown' (never answered, or expired)."""
        raise NotImplementedError

    async def release_feedback(self, request_id: str) -> None:
        """Undo a claim whose feedback could not be written."""
        raise NotImplementedError

    async def close(self) -> None:
        pass


class LocalState(State):
    """Limits in this process's memory: exact for one process; with N, each enforces its own."""

    def __init__(self):
        self.requests: dict[str, deque] = {}  # name -> admission times
        self.tokens: dict[str, TokenWindow] = {}
        self.budgets: dict[tuple[str, str], list[float]] = {}  # (name, period) -> [spent, held]
        self.answered: dict[str, list] = {}  # request id -> [until (monotonic), has feedback], oldest first

    async def remember_answered(self, request_id: str, ttl_s: float) -> None:
        self.remember_now(request_id, ttl_s)

    def remember_now(self, request_id: str, ttl_s: float) -> None:
        now = time.monotonic()
        answered = self.answered
        while answered and (len(answered) >= LOCAL_ANSWERED or next(iter(answered.values()))[0] <= now):
            del answered[next(iter(answered))]
        answered[request_id] = [now + ttl_s, False]

    async def claim_feedback(self, request_id: str) -> str:
        return self.claim_now(request_id)

    def claim_now(self, request_id: str) -> str:
        entry = self.answered.get(request_id)
        if entry is None or entry[0] <= time.monotonic():
            return "unknown"
        if entry[1]:
            return "repeat"
        entry[1] = True
        return "ok"

    async def release_feedback(self, request_id: str) -> None:
        if (entry := self.answered.get(request_id)) is not None:
            entry[1] = False

    async def admit(self, key: ClientKey, worst: float, request_id: str, day: str,
                    month: str) -> tuple[Refusal | None, str | None]:
        return self.admit_now(key, worst, day, month), "local"

    def admit_now(self, key: ClientKey, worst: float, day: str, month: str) -> Refusal | None:
        now = time.monotonic()
        if key.rpm is not None:
            times = self.counted(key)
            while times and times[0] <= now - WINDOW_S:
                times.popleft()
            if len(times) >= key.rpm:
                return Refusal("rpm", times[0] + WINDOW_S - now)
        if key.tpm is not None:
            window = self._tokens(key.name, now)
            if window.total >= key.tpm:
                return Refusal("tpm", window.buckets[0][0] + WINDOW_S - now)
        for limit, budget, period in (("day", key.day_usd, day), ("month", key.month_usd, month)):
            if budget is not None:
                spent, held = self.budgets.get((key.name, period), (0.0, 0.0))
                if spent + held + worst > budget + 1e-12:
                    return Refusal(limit, until_next(limit), spent + held)
        if key.rpm is not None:
            times.append(now)
        for budget, period in ((key.day_usd, day), (key.month_usd, month)):
            if budget is not None:
                self.budgets.setdefault((key.name, period), [0.0, 0.0])[1] += worst
        return None

    def counted(self, key: ClientKey) -> deque:
        """The key's latest admission times (as many as its rpm: no more are needed)."""
        times = self.requests.get(key.name)
        if times is None:
            times = self.requests[key.name] = deque(maxlen=key.rpm)
        return times

    def _tokens(self, name: str, now: float) -> TokenWindow:
        window = self.tokens.get(name)
        if window is None:
            window = self.tokens[name] = TokenWindow()
        window.prune(now)
        return window

    def settle(self, charge: Charge) -> None:
        self.apply(charge)

    def apply(self, charge: Charge) -> None:
        if charge.total_tokens:
            now = time.monotonic()
            self._tokens(charge.name, now).add(now, charge.total_tokens)
        for period in (charge.day, charge.month):
            entry = self.budgets.get((charge.name, period))
            if entry is None and not charge.total_usd:
                continue
            entry = self.budgets.setdefault((charge.name, period), [0.0, 0.0])
            entry[0] += charge.total_usd
            if charge.held_by == "local":
                entry[1] = max(0.0, entry[1] - charge.worst)


class TokenWindow:
    """Tokens per whole second over the last minute, and their total: O(1) to check and add."""

    def __init__(self):
        self.buckets: deque[list] = deque()  # [second, tokens], oldest first
        self.total = 0

    def prune(self, now: float) -> None:
        while self.buckets and self.buckets[0][0] <= now - WINDOW_S:
            self.total -= self.buckets.popleft()[1]

    def add(self, now: float, tokens: int) -> None:
        second = int(now)
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += tokens
        else:
            self.buckets.append([second, tokens])
        self.total += tokens


# KEYS: rpm, tokens, budget day, budget month, lease:ID. ARGV: rpm, tpm, day budget, month budget
# ('' = none), worst, lease id, rpm slots wanted, USD wanted (at least worst), the lease's life (s).
# Grants as much as the limits leave (of a budget, at most half what is left), at least one slot
# and worst: {'ok', slots, usd, tokens in the window}; a grant of more is recorded in lease:ID,
# which its return reads. Else {limit, retry after (s), used, held}. Slots of a lease of several
# are counted from the end of its life, so each is in the window at least as long as an admission
# at its use would be.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rpm, tpm, worst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[5])
local slots, usd, life = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
if redis.call('EXISTS', KEYS[5]) == 1 then slots, usd = 1, worst end  -- its return came first: no lease
if rpm then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 60)
  local free = rpm - redis.call('ZCARD', KEYS[1])
  if free < 1 then
    local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
    return {'rpm', tostring(math.min(60, tonumber(oldest[2]) + 60 - now)), '0'}
  end
  slots = math.min(slots, free)
end
local used_tokens = 0
if tpm then
  local kept = redis.call('HMGET', KEYS[2], 'sum', 'first')
  local used, first = tonumber(kept[1]) or 0, tonumber(kept[2])
  if first and first <= now - 60 then  -- its oldest second left the window (at most once a second)
    local fields, oldest = redis.call('HGETALL', KEYS[2]), nil
    used = 0
    for i = 1, #fields, 2 do
      local s = tonumber(fields[i])
      if s and s <= now - 60 then redis.call('HDEL', KEYS[2], fields[i])
      elseif s then used = used + tonumber(fields[i + 1]); if not oldest or s < oldest then oldest = s end end
    end
    if oldest then redis.call('HSET', KEYS[2], 'sum', used, 'first', oldest) else redis.call('DEL', KEYS[2]) end
    first = oldest
  end
  if used >= tpm then return {'tpm', tostring((first or now) + 60 - now), '0'} end
  used_tokens = used
end
local limits, fresh = {'day', 'month'}, {}
for i = 3, 4 do
  local budget = tonumber(ARGV[i])
  if budget then
    local kept = redis.call('HMGET', KEYS[i], 'spent', 'held')
    local used = (tonumber(kept[1]) or 0) + (tonumber(kept[2]) or 0)
    if used + worst > budget + 1e-12 then return {limits[i - 2], '-1', tostring(used), tostring(kept[2] or 0)} end
    usd = math.max(worst, math.min(usd, (budget - used) / 2))
    fresh[i] = not kept[1] and not kept[2]
  end
end
if rpm then
  local members, at = {}, slots > 1 and now + life or now
  for i = 1, slots do
    members[#members + 1] = at
    members[#members + 1] = i == 1 and ARGV[6] or ARGV[6] .. ':' .. i
  end
  redis.call('ZADD', KEYS[1], unpack(members))
  redis.call('EXPIRE', KEYS[1], 62)
end
for i = 3, 4 do
  if tonumber(ARGV[i]) and usd > 0 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'held', usd)
    -- Set once, when the period's counter is made: it outlives its day or month either way.
    if fresh[i] then redis.call('EXPIRE', KEYS[i], i == 3 and 259200 or 5356800) end
  end
end
if (rpm and slots > 1) or usd > worst + 1e-12 then
  redis.call('HSET', KEYS[5], 'slots', rpm and slots or 0, 'usd', string.format('%.17g', usd))
  redis.call('EXPIRE', KEYS[5], 259200)
end
return {'ok', tostring(slots), string.format('%.17g', usd), tostring(used_tokens)}
"""

# KEYS: lease:ID, rpm, budget day, budget month. ARGV: slots used, USD used, lease id. What the
# lease did not use goes back, once: the record is emptied, so a return retried finds nothing to
# give back, and a return that comes before its admission (a lost reply's) leaves the record
# empty, which makes that admission grant no lease.
_RETURN = """
local granted = redis.call('HMGET', KEYS[1], 'slots', 'usd')
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'returned', '1')
redis.call('EXPIRE', KEYS[1], 300)  -- longer than an admission can be on its way
if not granted[1] then return 0 end
local slots, used = tonumber(granted[1]), tonumber(ARGV[1])
if slots > used then
  local members = {}
  for i = used + 1, slots do members[#members + 1] = i == 1 and ARGV[3] or ARGV[3] .. ':' .. i end
  redis.call('ZREM', KEYS[2], unpack(members))
end
local back = tonumber(granted[2]) - tonumber(ARGV[2])
for i = 3, 4 do
  if back > 0 and redis.call('HEXISTS', KEYS[i], 'held') == 1 then
    redis.call('HINCRBYFLOAT', KEYS[i], 'held', -back)
  end
end
return 1
"""

# KEYS: charged:ID, budget day, budget month, tokens, ledger:DAY, ledger:days. ARGV: held, usd,
# tokens, day, then per model: field prefix, usd, calls, prompt tokens, completion tokens.
# Returns 1 if charged now, 0 if this request was charged before.
_SETTLE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', %d) then return 0 end
local held, usd, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 2, 3 do
  if held > 0 then redis.call('HINCRBYFLOAT', KEYS[i], 'held', -held) end
  if usd > 0 then redis.call('HINCRBYFLOAT', KEYS[i], 'spent', usd) end
  redis.call('EXPIRE', KEYS[i], i == 2 and 259200 or 5356800)
end
if tokens > 0 then
  local second = redis.call('TIME')[1]
  redis.call('HINCRBY', KEYS[4], second, tokens)
  redis.call('HINCRBY', KEYS[4], 'sum', tokens)
  redis.call('HSETNX', KEYS[4], 'first', second)
  redis.call('EXPIRE', KEYS[4], 120)
end
for i = 5, #ARGV, 5 do
  redis.call('HINCRBYFLOAT', KEYS[5], ARGV[i] .. 'usd', ARGV[i + 1])
  redis.call('HINCRBY', KEYS[5], ARGV[i] .. 'calls', ARGV[i + 2])
  redis.call('HINCRBY', KEYS[5], ARGV[i] .. 'prompt_tokens', ARGV[i + 3])
  redis.call('HINCRBY', KEYS[5], ARGV[i] .. 'completion_tokens', ARGV[i + 4])
end
redis.call('SADD', KEYS[6], ARGV[4])
return 1
""" % CHARGED_TTL_S

# KEYS: circuit:MODEL for every model. ARGV: per model 'open:<until ms>', 'close' or ''.
# Returns each model's open-until (ms) or false.
_HEALTH = """
for i, key in ipairs(KEYS) do
  local action = ARGV[i]
  if action == 'close' then redis.call('DEL', key)
  elseif action ~= '' then
    local until_ms = tonumber(string.sub(action, 6))
    local ttl = until_ms - tonumber(redis.call('TIME')[1]) * 1000
    local known = tonumber(redis.call('GET', key) or '0')
    if ttl > 0 and until_ms > known then redis.call('SET', key, until_ms, 'PX', math.floor(ttl)) end
  end
end
return redis.call('MGET', unpack(KEYS))
"""

# KEYS: answered:ID. Returns 1 if claimed now, 2 if it had feedback before, 0 if not known.
# SETRANGE keeps the key's expiry.
_CLAIM = """
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
if v == '1' then return 2 end
redis.call('SETRANGE', KEYS[1], 0, '1')
return 1
"""

LEDGER_FIELDS = ("usd", "calls", "prompt_tokens", "completion_tokens")


@dataclass
class Lease:
    """A part of a key's limits granted to this process by Redis, for requests admitted here
    until ``until`` (monotonic) without a round trip. ``tokens``: the key's tokens in the window
    when granted, plus those this process has counted since."""

    id: str
    day: str
    month: str
    until: float
    slots: int  # granted
    usd: float  # budget left
    taken: float  # budget used (the worst cases of the requests admitted from it)
    tokens: float
    used: int = 1  # slots used (the request that took the lease used the first)

    def covers(self, key: ClientKey, worst: float, day: str, month: str, now: float) -> bool:
        return (now < self.until and day == self.day and month == self.month
                and (key.rpm is None or self.used < self.slots)
                and (key.day_usd is None and key.month_usd is None or worst <= self.usd + 1e-12)
                and (key.tpm is None or self.tokens < key.tpm))

    def take(self, worst: float) -> None:
        self.used += 1
        self.usd -= worst
        self.taken += worst

    def slot(self, i: int) -> str:
        """The rpm window's member for slot ``i`` (1-based): the first is the lease id itself."""
        return self.id if i == 1 else f"{self.id}:{i}"


class Script:
    """A Lua script Redis runs by its SHA1, sent whole only when Redis has not seen it."""

    def __init__(self, text: str):
        self.text, self.sha = text, hashlib.sha1(text.encode()).hexdigest()

    def command(self, keys: list[str], args: list) -> tuple:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)


def _no_script(reply) -> bool:
    return isinstance(reply, NoScriptError)


class RedisState(State):
    ledger_kept = True

    def __init__(self, url: str, fail: str = "open", prefix: str = "herd:"):
        # A short timeout: an unreachable Redis must cost a request milliseconds, not seconds.
        try:
            self.redis = RedisClient(url, timeout=0.5)
        except ValueError as e:  # a scheme, host, port, database or option herd cannot read
            raise UsageError(f"state {_shown(url)!r} ({ENV_STATE_URL}, --state or gateway.state): {e}") from None
        self.url, self.fail, self.prefix = _shown(url), fail, prefix
        self.local = LocalState()  # this process's own limits, used while Redis is unreachable
        # Charges and lease returns not yet written to Redis, oldest first, as their scripts and
        # commands ready to send (made when the charge is settled, after its answer, not on a
        # later request's path).
        self.pending: list[tuple[Script, tuple]] = []
        self.carried = 0  # charges taken from pending by a round trip still under way
        self._writer: asyncio.Task | None = None
        self._flush: asyncio.TimerHandle | None = None
        self.up = True
        self.models: tuple[str, ...] = ()  # whose circuits are shared
        self._admit, self._settle, self._return = Script(_ADMIT), Script(_SETTLE), Script(_RETURN)
        self._health, self._claim = Script(_HEALTH), Script(_CLAIM)
        self.leases: dict[str, Lease] = {}  # key name -> this process's lease
        self.recent: dict[str, deque] = {}  # key name -> times of its latest admissions here
        self.leasing: dict[str, asyncio.Future] = {}  # key name -> done when its round trip ends
        self.closing = False
        tm.labelled(tm.STATE_UP, "redis").set(1)

    async def _run(self, script: Script, keys: list[str], args: list):
        """One script's reply; an error reply raised (a ReplyError, as the connection's errors are OSErrors)."""
        reply = (await self._run_all([(script, script.command(keys, args))]))[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def _run_all(self, calls: list[tuple[Script, tuple]]) -> list:
        """Replies to scripts run in order in one round trip (each call: the script and its
        command); those Redis did not know (after its restart) are sent
        again once loaded."""
        commands = [command for _, command in calls]
        replies = await self.redis.pipeline(commands)
        again = [i for i, reply in enumerate(replies) if _no_script(reply)]
        if again:
            for script in {calls[i][0] for i in again}:
                await self.redis.call("SCRIPT", "LOAD", script.text)
            for i, reply in zip(again, await self.redis.pipeline([commands[i] for i in again])):
                replies[i] = reply
        return replies

    def _down(self, e: Exception) -> None:
        tm.STATE_ERRORS.inc()
        if self.up:
            self.up = False
            tm.labelled(tm.STATE_UP, "redis").set(0)
            log.warning("limits store %s unreachable (%s); %s until it is back", self.url, type(e).__name__,
                        "serving with this process's own limits" if self.fail == "open" else
                        "refusing limited requests")
            for name in list(self.leases):  # what they hold goes back once Redis is
                self._give_back(name)

    def _back(self) -> None:
        if not self.up:
            self.up = True
            tm.labelled(tm.STATE_UP, "redis").set(1)
            log.warning("limits store %s reachable again; %d charge(s) to write", self.url, len(self.pending))

    async def admit(self, key: ClientKey, worst: float, request_id: str, day: str,
                    month: str) -> tuple[Refusal | None, str | None]:
        """From this process's lease of the key's limits when it covers the request (no round
        trip). Else one round trip, which also carries the charges waiting to be written (before
        the admission, so it sees them) and, for a key busy here, takes a lease for the requests
        that follow. Requests arriving while a lease is on its way wait for it."""
        name = key.name
        for _ in range(2):
            lease, now = self.leases.get(name), time.monotonic()
            if lease is not None and self.up:
                if lease.covers(key, worst, day, month, now):
                    lease.take(worst)
                    self._busy(key.name, now)
                    self._count_here(key, now)
                    return None, "shared"
                self._give_back(name)
            coming = self.leasing.get(name)
            if coming is None:
                break
            await asyncio.wait([coming])
        now = time.monotonic()
        recent = self._busy(name, now)
        # One lease on its way per key: a request that goes to Redis beside it asks for itself only.
        coming = None if name in self.leasing or self.closing else asyncio.get_running_loop().create_future()
        slots, usd = self._lease_size(key, worst, recent if coming is not None else 1)
        leasing = _is_lease(key, slots, usd, worst)
        p = self.prefix
        keys = [f"{p}rpm:{name}", f"{p}tokens:{name}", f"{p}budget:{name}:d:{day}", f"{p}budget:{name}:m:{month}",
                f"{p}lease:{request_id}"]
        args = [_arg(key.rpm), _arg(key.tpm), _arg(key.day_usd), _arg(key.month_usd), repr(worst), request_id,
                slots, repr(usd), repr(LEASE_S)]
        admission = self._admit.command(keys, args)
        if coming is not None:  # the others wait for this one's lease
            self.leasing[name] = coming
        try:
            for recheck in (False, True):
                if not self.up:
                    break
                carried, now = self._take(), time.monotonic()
                try:
                    replies = await self._run_all([*carried, (self._admit, admission)])
                except BaseException as e:  # cancelled too: what it carried waits again
                    self._landed(carried, False)
                    if leasing:  # a lease Redis may have granted, its reply lost: it goes back, but
                        # for this request's own slot if it is served (fail open; its worst case
                        # is held here, so all the budget goes back)
                        served = isinstance(e, (ReplyError, OSError)) and self.fail == "open"
                        self._return_lease(name, request_id, day, month, used=int(served), taken=0.0)
                    if not isinstance(e, (ReplyError, OSError)):
                        raise
                    self._down(e)
                    break
                self._landed(carried, self._settled(replies[:-1]))
                got = replies[-1]
                if isinstance(got, ReplyError):
                    self._down(got)
                    break
                if got[0] == "ok":
                    self._count_here(key, now)
                    self._lease(key, request_id, day, month, now, worst, int(got[1]), float(got[2]), float(got[3]))
                    return None, "shared"
                limit, retry, used, held = got[0], float(got[1]), float(got[2]), float(got[3] if len(got) > 3 else 0)
                if limit in ("day", "month") and held > 0 and not recheck:
                    await asyncio.sleep(HELD_RECHECK_S)
                    continue
                return Refusal(limit, until_next(limit) if retry < 0 else retry, used), None
        finally:
            if coming is not None:
                del self.leasing[name]
                coming.set_result(None)
        if self.fail == "closed":
            raise StateDown()
        return self.local.admit_now(key, worst, day, month), "local"

    def _count_here(self, key: ClientKey, now: float) -> None:
        if key.rpm is not None:  # this process's own count too, should Redis become unreachable
            self.local.counted(key).append(now)

    def _busy(self, name: str, now: float) -> int:
        """Note a request of the key here; how many it had in the last LEASE_S."""
        recent = self.recent.get(name)
        if recent is None:
            recent = self.recent[name] = deque(maxlen=LEASE_SLOTS)
        while recent and recent[0] <= now - LEASE_S:
            recent.popleft()
        recent.append(now)
        return len(recent)

    def _lease_size(self, key: ClientKey, worst: float, recent: int) -> tuple[int, float]:
        """Slots and USD to ask for: about twice the key's admissions here in the last LEASE_S
        (one, the request itself, for a key not busy here), within the shares of its limits."""
        wanted = 1 if recent <= 1 else 2 * recent
        if key.rpm is not None:
            wanted = min(wanted, max(1, int(key.rpm * LEASE_SHARE)), LEASE_SLOTS)
        budgets = [b for b in (key.day_usd, key.month_usd) if b is not None]
        usd = 0.0 if not budgets else max(worst, min(worst * wanted, LEASE_BUDGET_SHARE * min(budgets)))
        return wanted, usd

    def _lease(self, key: ClientKey, request_id: str, day: str, month: str, asked_at: float, worst: float,
               slots: int, usd: float, tokens: float) -> None:
        """Keep what Redis granted beyond this request as the key's lease, until LEASE_S after it
        was asked for (Redis counts its slots from LEASE_S after it granted them: later)."""
        if not _is_lease(key, slots, usd, worst):
            return
        self._give_back(key.name)  # one lease per key: a request beside this one's may have taken one
        lease = Lease(request_id, day, month, asked_at + LEASE_S, slots, usd - worst, worst, tokens)
        self.leases[key.name] = lease
        if self.closing:  # close() has given the leases back already
            self._give_back(key.name)
        else:
            asyncio.get_running_loop().call_later(LEASE_S, self._give_back, key.name, lease)

    def settle(self, charge: Charge) -> None:
        """Count the charge in this process at once, and queue it for Redis, after the answer
        has been sent: this process's next admission carries it (no round trip of its own), or,
        if none comes within ``SETTLE_DELAY_S``, the writer sends every charge waiting in one
        round trip. The worst case held at admission stays on the budget until then."""
        self.local.apply(charge)
        lease = self.leases.get(charge.name)
        if lease is not None:
            lease.tokens += charge.total_tokens
        self._queue(self._settle, self._settle.command(*self._settle_call(charge)))

    def _queue(self, script: Script, command: tuple) -> None:
        self.pending.append((script, command))
        self._count_pending()
        if len(self.pending) >= SETTLE_BATCH and self.up:
            self._write_pending()
        else:
            self._flush_soon()

    def _give_back(self, name: str, lease: Lease | None = None) -> None:
        """End the key's lease (or ``lease``, if still the key's): its unused slots and budget are
        queued to go back, with the charges."""
        if lease is not None and self.leases.get(name) is not lease:
            return
        lease = self.leases.pop(name, None)
        if lease is not None:  # used up or not: the return also clears Redis's record of it
            self._return_lease(name, lease.id, lease.day, lease.month, lease.used, lease.taken)

    def _return_lease(self, name: str, lease_id: str, day: str, month: str, used: int, taken: float) -> None:
        """Queue the return of what a lease did not use: its slots after the first ``used`` and its
        budget beyond ``taken`` (Redis knows what it granted)."""
        p = self.prefix
        keys = [f"{p}lease:{lease_id}", f"{p}rpm:{name}", f"{p}budget:{name}:d:{day}", f"{p}budget:{name}:m:{month}"]
        self._queue(self._return, self._return.command(keys, [used, repr(taken), lease_id]))

    def _flush_soon(self) -> None:
        """The writer in SETTLE_DELAY_S unless an admission takes the charges first (while Redis
        is unreachable, the probe that finds it again starts the writer)."""
        if self._flush is None and self.up:
            self._flush = asyncio.get_running_loop().call_later(SETTLE_DELAY_S, self._flush_now)

    def _flush_now(self) -> None:
        self._flush = None
        if self.pending and self.up:
            self._write_pending()

    def _write_pending(self) -> asyncio.Task:
        """The one writer, which sends waiting charges until none wait."""
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return self._writer

    async def _drain(self) -> None:
        """Write waiting charges, oldest first, until none wait or Redis is unreachable."""
        while self.pending and self.up:
            batch, written = self._take(), False
            try:
                written = await self._write(batch)
            finally:
                self._landed(batch, written)
            if not written:
                break

    def _take(self) -> list[tuple]:
        """Waiting charges for one round trip (they count as waiting until it lands)."""
        batch = self.pending[:SETTLE_BATCH]
        if batch:
            del self.pending[:len(batch)]
            self.carried += len(batch)
            if not self.pending and self._flush is not None:  # nothing left for it: no wake-up for nothing
                self._flush.cancel()
                self._flush = None
        return batch

    def _landed(self, batch: list[tuple], written: bool) -> None:
        """A round trip that carried ``batch`` has ended; charges not written wait again."""
        if batch:
            self.carried -= len(batch)
            if not written:
                self.pending[:0] = batch
                self._flush_soon()
            self._count_pending()

    def _count_pending(self) -> None:
        tm.STATE_PENDING.set(len(self.pending) + self.carried)

    def _settled(self, replies: list) -> bool:
        """Whether Redis applied every charge of a round trip (or had applied it before)."""
        failed = next((r for r in replies if isinstance(r, ReplyError)), None)
        if failed is not None:
            self._down(failed)
        return failed is None

    async def _write(self, batch: list[tuple]) -> bool:
        """One round trip for the batch; False (all of it kept to send again) if Redis failed any
        of it: a charge already applied is skipped then by its request id."""
        try:
            replies = await self._run_all(batch)
        except (ReplyError, OSError) as e:
            self._down(e)
            return False
        return self._settled(replies)

    def _settle_call(self, charge: Charge) -> tuple[list[str], list]:
        p = self.prefix
        args = [repr(charge.worst if charge.held_by == "shared" else 0.0), repr(charge.total_usd),
                charge.total_tokens, charge.day]
        for model, usd in charge.usd.items():
            prompt, completion = charge.tokens.get(model, (0.0, 0.0))
            args += [f"{charge.name}\t{model}\t", repr(usd), charge.calls.get(model, 0), round(prompt), round(completion)]
        keys = [f"{p}charged:{charge.request_id}", f"{p}budget:{charge.name}:d:{charge.day}",
                f"{p}budget:{charge.name}:m:{charge.month}", f"{p}tokens:{charge.name}", f"{p}ledger:{charge.day}",
                f"{p}ledger:days"]
        return keys, args

    async def share_health(self, opened: dict[str, float], closed: list[str]) -> dict[str, float]:
        """Also the probe of an unreachable Redis, and where waiting charges are written."""
        models = sorted({*opened, *closed, *self.models})
        actions = [f"open:{round(opened[m] * 1000)}" if m in opened else "close" if m in closed else "" for m in models]
        try:
            values = await self._run(self._health, [f"{self.prefix}circuit:{m}" for m in models], actions)
        except (ReplyError, OSError) as e:
            self._down(e)
            return {}
        self._back()
        if self.pending:
            self._write_pending()
        return {m: float(v) / 1000 for m, v in zip(models, values) if v}

    async def remember_answered(self, request_id: str, ttl_s: float) -> None:
        """In Redis before the answer leaves, so feedback to any worker finds it; while Redis is
        unreachable, in this process (which then takes that feedback itself)."""
        if self.up:
            try:
                await self.redis.call("SET", f"{self.prefix}answered:{request_id}", "0", "EX", max(1, round(ttl_s)))
                return
            except (ReplyError, OSError) as e:
                self._down(e)
        self.local.remember_now(request_id, ttl_s)

    async def claim_feedback(self, request_id: str) -> str:
        """Redis says; an id this process remembered while Redis was unreachable is claimed here,
        and while it is unreachable any other id is refused with StateDown, not called unknown."""
        if self.up:
            try:
                got = await self._run(self._claim, [f"{self.prefix}answered:{request_id}"], [])
            except (ReplyError, OSError) as e:
                self._down(e)
            else:
                if got or request_id not in self.local.answered:
                    return {0: "unknown", 1: "ok", 2: "repeat"}[got]
        if request_id in self.local.answered:
            return self.local.claim_now(request_id)
        raise StateDown()

    async def release_feedback(self, request_id: str) -> None:
        await self.local.release_feedback(request_id)
        try:
            await self.redis.call("SET", f"{self.prefix}answered:{request_id}", "0", "XX", "KEEPTTL")
        except (ReplyError, OSError) as e:
            self._down(e)

    async def ledger(self) -> list[dict]:
        """Every (key, model, day) row of the ledger, oldest day first."""
        rows = []
        for day in sorted(await self.redis.call("SMEMBERS", f"{self.prefix}ledger:days")):
            cells: dict[tuple[str, str], dict] = {}
            fields = await self.redis.call("HGETALL", f"{self.prefix}ledger:{day}")
            for name, value in fields.items():
                key, model, what = name.split("\t")
                cells.setdefault((key, model), {})[what] = float(value) if what == "usd" else int(value)
            rows += [{"key": k, "model": m, "day": day, **{f: v.get(f, 0) for f in LEDGER_FIELDS}}
                     for (k, m), v in sorted(cells.items())]
        return rows

    async def close(self) -> None:
        self.closing = True
        if self.leasing:  # leases on their way: given back as they come
            await asyncio.wait(list(self.leasing.values()), timeout=1.0)
        for name in list(self.leases):
            self._give_back(name)
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
        if self.pending and self.up:
            await self._write_pending()
        if self.pending:
            log.warning("limits store %s: %d charge(s) could not be written before exit", self.url, len(self.pending))
        await self.redis.close()


def make_state(settings: GatewaySettings) -> State:
    """Redis at ``HERD_STATE_URL`` or the pool file's ``gateway.state``, else this process's memory."""
    url = os.environ.get(ENV_STATE_URL) or settings.state
    if not url:
        return LocalState()
    return RedisState(url, settings.state_fail)


def _is_lease(key: ClientKey, slots: int, usd: float, worst: float) -> bool:
    """Whether slots and USD go beyond the request's own slot and worst case: a lease (as _ADMIT
    decides when it records a grant)."""
    return (key.rpm is not None and slots > 1) or usd > worst + 1e-12


def _arg(value) -> str:
    return "" if value is None else repr(value)


def _shown(url: str) -> str:
    """The URL without its password, for logs."""
    head, at, tail = url.rpartition("@")
    return f"{head.split('://')[0]}://***@{tail}" if at else url


@dataclass
class SharedHealth:
    """Every ``HEALTH_SYNC_S``: circuits this process opened or closed are published, and a model
    another process found failing is opened here for the rest of its cooldown, so no process has
    to fail on it first. Circuits stay each process's own; only their open/closed turns travel."""

    state: State
    backends: dict[str, Backend]
    seen: dict[str, float | None] = field(default_factory=dict)
    task: asyncio.Task | None = None

    def start(self) -> None:
        if isinstance(self.state, RedisState):
            self.state.models = tuple(self.backends)
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception as e:  # the loop must outlive anything one tick meets
                log.warning("sharing backend health failed (%s)", type(e).__name__)
            await asyncio.sleep(HEALTH_SYNC_S)

    async def tick(self) -> None:
        opened, closed = {}, []
        wall, mono = time.time(), time.monotonic()
        for name, backend in self.backends.items():
            c = backend.circuit
            if c.opened_at != self.seen.get(name):
                if c.opened_at is not None:
                    opened[name] = wall + c.cooldown_s - (mono - c.opened_at)
                else:
                    closed.append(name)
                self.seen[name] = c.opened_at
        shared = await self.state.share_health(opened, closed)
        wall, mono = time.time(), time.monotonic()
        for name, until in shared.items():
            c = self.backends[name].circuit
            local_until = None if c.opened_at is None else wall + c.cooldown_s - (mono - c.opened_at)
            if until > wall and (local_until is None or until > local_until + 0.05):
                c.opened_at, c.trial = mono - (c.cooldown_s - (until - wall)), False
                self.seen[name] = c.opened_at

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
