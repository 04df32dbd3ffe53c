"""The Redis store on its own, against a real redis-server on loopback: herd's Redis client
(gateway/redis_client.py over redis-py: concurrent calls, error replies in place, timeouts,
a Redis that dies and comes back, URLs) and RedisState's tokens window, scripts
Redis has forgotten, and charges kept while Redis is down and written at close."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from servers import redis_missing

from herd.errors import UsageError
from herd.gateway.keys import ClientKey
from herd.gateway.redis_client import RedisClient, ReplyError
from herd.gateway.state import HELD_RECHECK_S, LEASE_S, LEASE_SHARE, SETTLE_DELAY_S, Charge, RedisState, periods

pytestmark = pytest.mark.skipif(redis_missing() is not None, reason=str(redis_missing()))


def run(coroutine):
    return asyncio.run(coroutine)


def test_concurrent_calls_get_their_own_replies(redis_server):
    async def go():
        # fsync always: a write waits for the disk, so no test of the timeout here
        wire, other = RedisClient(redis_server.url, timeout=10), RedisClient(redis_server.url, timeout=10)
        await other.call("SET", "name", "before")

        async def one(i):
            await asyncio.sleep(0.001 * (i % 7))
            replies = await wire.pipeline([("SET", f"k{i}", f"v{i}"), ("GET", f"k{i}"), ("INCR", "count")])
            assert replies[:2] == [True, f"v{i}"] and isinstance(replies[2], int)
            assert await wire.call("GET", f"k{i}") == f"v{i}"

        await asyncio.gather(*(one(i) for i in range(300)))
        assert await wire.call("GET", "count") == "300"
        await wire.close()
        await other.close()

    run(go())


def test_an_error_reply_is_in_its_place_and_the_connection_stays(redis_server):
    async def go():
        wire = RedisClient(redis_server.url)
        replies = await wire.pipeline([("SET", "a", "1"), ("HGET", "a", "x"), ("GET", "a"), ("GET", "missing"),
                                       ("HGETALL", "missing"), ("RPUSH", "list", "é", "", "x y")])
        assert replies[0] is True and isinstance(replies[1], ReplyError) and "WRONGTYPE" in str(replies[1])
        assert replies[2:] == ["1", None, {}, 3]
        with pytest.raises(ReplyError, match="unknown command"):
            await wire.call("NOSUCHCOMMAND")
        assert await wire.call("LRANGE", "list", 0, -1) == ["é", "", "x y"]
        await wire.close()

    run(go())


def test_a_redis_that_does_not_answer_times_out_and_the_next_call_connects_again(redis_server):
    async def go():
        wire, admin = RedisClient(redis_server.url, timeout=0.3), RedisClient(redis_server.url)
        assert await wire.call("PING") is True
        await admin.call("CLIENT", "PAUSE", 1000)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await wire.call("PING")
        assert time.monotonic() - started < 0.9
        await asyncio.sleep(1.0)
        assert await wire.call("PING") is True
        await wire.close()
        await admin.close()

    run(go())


def test_a_redis_killed_fails_calls_at_once_and_is_used_again_when_back(redis_server):
    async def go():
        wire = RedisClient(redis_server.url)
        assert await wire.call("SET", "kept", "1") is True
        redis_server.kill()
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(OSError):
                await wire.call("GET", "kept")
        assert time.monotonic() - started < 1.0  # refused connections, not timeouts
        redis_server.start()
        assert await wire.call("GET", "kept") == "1"  # fsync always: it was on disk
        await wire.close()

    run(go())


def test_password_and_database_from_the_url(redis_server):
    async def go():
        admin = RedisClient(redis_server.url)
        await admin.call("CONFIG", "SET", "requirepass", "p@ss word")
        try:
            port = redis_server.port
            wire = RedisClient(f"redis://:p%40ss%20word@127.0.0.1:{port}/3")
            assert await wire.call("SET", "where", "db3") is True
            check = RedisClient(f"redis://default:p%40ss%20word@127.0.0.1:{port}/0?db=3")
            assert await check.call("GET", "where") == "db3"
            await wire.close()
            await check.close()
            wrong = RedisClient(f"redis://:nope@127.0.0.1:{port}/0")
            with pytest.raises(ConnectionError):
                await wrong.call("PING")
            await wrong.close()
        finally:
            await admin.call("AUTH", "p@ss word")
            await admin.call("CONFIG", "SET", "requirepass", "")
            await admin.close()

    run(go())


@pytest.mark.parametrize("url", ["memcached://h", "redis://h/x", "redis://h:notaport/0"])
def test_urls_herd_cannot_read(url):
    with pytest.raises(UsageError, match="gateway.state"):
        RedisState(url)


async def until(condition, timeout: float = 10.0) -> None:
    """Wait for ``condition()``, checked every 10 ms, failing after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def round_trips(state: RedisState) -> list[int]:
    """The number of commands of each round trip ``state`` makes to Redis from now on."""
    trips, pipeline = [], state.redis.pipeline

    async def counted(commands):
        trips.append(len(commands))
        return await pipeline(commands)

    state.redis.pipeline = counted
    return trips


def charge(rid: str, worst: float, usd: float, tokens: tuple[float, float] = (30.0, 20.0), held_by="shared"):
    day, month = periods()
    return Charge("k", rid, worst, held_by, {"m": usd}, {"m": 1}, {"m": tokens}, day, month)


def test_tokens_window_counts_the_last_minute(redis_server):
    """tpm 100: 50 tokens settled, then 50 more: refused until the second they were counted in
    leaves the window; seconds that left it are dropped from the sum."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", tpm=100)
        assert (await state.admit(key, 0.0, "r1", day, month)) == (None, "shared")
        state.settle(charge("r1", 0.0, 0.0))
        await state.close()
        state = RedisState(redis_server.url)
        assert (await state.admit(key, 0.0, "r2", day, month))[0] is None  # 50 < 100
        state.settle(charge("r2", 0.0, 0.0))
        await state.close()
        state = RedisState(redis_server.url)
        refused, _ = await state.admit(key, 0.0, "r3", day, month)
        assert refused.limit == "tpm" and 0 < refused.retry_after_s <= 60
        # As if a minute passed: the seconds counted move back by 61 s.
        fields = await state.redis.call("HGETALL", "herd:tokens:k")
        kept = dict(fields)
        assert kept["sum"] == "100"
        old = {str(int(s) - 61): n for s, n in kept.items() if s.isdigit()}
        await state.redis.call("DEL", "herd:tokens:k")
        await state.redis.call("HSET", "herd:tokens:k", *[x for kv in old.items() for x in kv], "sum", "100",
                               "first", min(old, key=int))
        assert (await state.admit(key, 0.0, "r4", day, month))[0] is None
        assert await state.redis.call("EXISTS", "herd:tokens:k") == 0  # nothing left in the window
        await state.close()

    run(go())


def test_scripts_redis_forgot_are_loaded_again(redis_server):
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", rpm=10, day_usd=1.0)
        assert (await state.admit(key, 0.25, "r1", day, month))[0] is None
        await state.redis.call("SCRIPT", "FLUSH")
        assert (await state.admit(key, 0.25, "r2", day, month))[0] is None
        await state.redis.call("SCRIPT", "FLUSH")
        state.settle(charge("r1", 0.25, 0.1))
        state.settle(charge("r2", 0.25, 0.1))
        await state.close()
        assert state.up and not state.pending
        state = RedisState(redis_server.url)
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert {k: float(v) for k, v in budget.items()} == pytest.approx({"spent": 0.2, "held": 0.0})
        assert [r["calls"] for r in await state.ledger()] == [2]
        await state.close()

    run(go())


def test_charges_wait_while_redis_is_down_and_are_written_once_when_it_is_back(redis_server):
    """A charge settled after its answer while Redis is unreachable is kept, and written when the
    health probe finds Redis again; the hold taken at admission is replaced by what was spent."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        state.models = ("m",)  # whose circuits the probe shares, as the gateway sets them
        key = ClientKey("k", b"s", day_usd=1.0)
        assert (await state.admit(key, 0.5, "r1", day, month)) == (None, "shared")
        redis_server.kill()
        state.settle(charge("r1", 0.5, 0.2))
        await asyncio.sleep(0.05)
        assert not state.up and len(state.pending) == 1
        assert await state.share_health({}, []) == {}  # the probe: still down
        redis_server.start()
        await state.share_health({}, [])
        await asyncio.gather(state._writer)
        assert state.up and not state.pending
        state.settle(charge("r1", 0.5, 0.2))  # the same request again: not counted twice
        await state.close()
        state = RedisState(redis_server.url)
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert {k: float(v) for k, v in budget.items()} == pytest.approx({"spent": 0.2, "held": 0.0})
        assert [(r["calls"], r["usd"]) for r in await state.ledger()] == [(1, pytest.approx(0.2))]
        await state.close()

    run(go())


def test_close_writes_every_charge_settled_before_it(redis_server):
    """Charges settled just before shutdown (their answers already sent) are in the ledger once
    close returns."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", day_usd=100.0)
        for i in range(600):
            assert (await state.admit(key, 0.01, f"r{i}", day, month))[0] is None
        for i in range(600):
            state.settle(charge(f"r{i}", 0.01, 0.001))
        await state.close()
        state = RedisState(redis_server.url)
        assert [r["calls"] for r in await state.ledger()] == [600]
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert {k: float(v) for k, v in budget.items()} == pytest.approx({"spent": 0.6, "held": 0.0})
        await state.close()

    run(go())


def test_a_charge_rides_with_the_next_admission_or_is_sent_alone_soon(redis_server):
    """Settled after its answer, a charge waits for this process's next admission and goes to
    Redis in its round trip (before it, so the admission sees it); with no admission, it is sent
    alone within SETTLE_DELAY_S."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        await state.admit(ClientKey("other", b"o", rpm=10), 0.0, "r0", day, month)  # Redis learns the scripts
        state.settle(charge("r0", 0.0, 0.0))
        await state.close()
        state, key = RedisState(redis_server.url), ClientKey("k", b"s", day_usd=1.0)
        sent = round_trips(state)
        assert (await state.admit(key, 0.5, "r1", day, month))[0] is None
        state.settle(charge("r1", 0.5, 0.1))
        assert len(state.pending) == 1 and sent == [1]
        # 0.5 held by r1 until its charge lands: 0.6 more fits only because it lands first.
        assert (await state.admit(key, 0.6, "r2", day, month))[0] is None
        assert sent == [1, 2] and not state.pending and not state.carried
        state.settle(charge("r2", 0.6, 0.2))
        await asyncio.sleep(SETTLE_DELAY_S + 0.1)
        assert sent == [1, 2, 1] and not state.pending
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert {k: float(v) for k, v in budget.items()} == pytest.approx({"spent": 0.3, "held": 0.0})
        await state.close()

    run(go())


def test_a_budget_refusal_waits_for_charges_on_their_way(redis_server):
    """Process A answered a request and its charge has not reached Redis yet when process B
    admits the next one: B's refusal, with a hold on the budget, is checked again once A's charge
    has landed. With nothing held, a request over the budget is refused at once."""
    async def go():
        a, b, (day, month) = RedisState(redis_server.url), RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", day_usd=1.0)
        assert (await a.admit(key, 0.6, "r1", day, month))[0] is None
        a.settle(charge("r1", 0.6, 0.1))
        assert (await b.admit(key, 0.5, "r2", day, month))[0] is None  # 0.1 spent + 0.5 held, once A's lands
        b.settle(charge("r2", 0.5, 0.5))
        await b.close()
        b = RedisState(redis_server.url)
        started = time.monotonic()
        refused, _ = await b.admit(key, 0.5, "r3", day, month)  # 0.6 spent, nothing held
        assert refused.limit == "day" and refused.used == pytest.approx(0.6)
        assert time.monotonic() - started < HELD_RECHECK_S
        await a.close()
        await b.close()

    run(go())


def test_tls(tmp_path):
    """rediss://: verified against a private CA given in the URL; refused when the certificate
    cannot be verified; taken unverified with ssl_cert_reqs=none."""
    import shutil
    import subprocess

    from fake_backend import free_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca, key, csr, cert = (str(tmp_path / n) for n in ("ca.pem", "server.key", "server.csr", "server.pem"))
    ext = tmp_path / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "ca.key"), "-out", ca,
                 "-days", "1", "-subj", "/CN=herd test CA"],
                ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
                ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", str(tmp_path / "ca.key"), "-CAcreateserial",
                 "-out", cert, "-days", "1", "-extfile", str(ext)]):
        subprocess.run(["openssl", *cmd], check=True, capture_output=True)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca,
                             "--tls-auth-clients", "no", "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    async def go():
        trusted = RedisClient(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}", timeout=2)
        for _ in range(100):  # until it listens
            try:
                assert await trusted.call("SET", "over", "tls") is True
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.skip("this redis-server has no TLS")
                await asyncio.sleep(0.1)
        unverified = RedisClient(f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none", timeout=2)
        assert await unverified.call("GET", "over") == "tls"
        strange = RedisClient(f"rediss://127.0.0.1:{port}/0", timeout=2)
        with pytest.raises(OSError, match="CERTIFICATE_VERIFY_FAILED"):
            await strange.call("PING")
        for wire in (trusted, unverified, strange):
            await wire.close()

    try:
        run(go())
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_busy_key_is_admitted_from_a_lease_and_what_it_leaves_goes_back(redis_server):
    """Requests in quick succession: after the first few, this process admits from a lease of
    slots and budget (no round trip each); Redis counts the leased slots and holds the leased
    budget meanwhile, and once the lease ends, what it did not use goes back: the window then
    holds exactly the requests admitted and the budget only what was spent."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", rpm=1000, day_usd=100.0)
        trips = round_trips(state)
        for i in range(50):
            assert (await state.admit(key, 0.01, f"r{i}", day, month)) == (None, "shared")
        assert len(trips) < 10 and "k" in state.leases
        lease = state.leases["k"]
        assert 1 < lease.slots <= 1000 * LEASE_SHARE
        window = await state.redis.call("ZCARD", "herd:rpm:k")
        assert window > 50  # the lease's slots not used yet are counted too
        held = float((await state.redis.call("HGETALL", f"herd:budget:k:d:{day}"))["held"])
        assert held == pytest.approx(0.5 + lease.usd)
        for i in range(50):
            state.settle(charge(f"r{i}", 0.01, 0.004))
        await asyncio.sleep(LEASE_S)  # the lease ends; its leftovers go back with the charges
        await until(lambda: not state.leases and not state.pending and not state.carried)
        assert await state.redis.call("ZCARD", "herd:rpm:k") == 50
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert {k: float(v) for k, v in budget.items()} == pytest.approx({"spent": 0.2, "held": 0.0})
        await state.close()

    run(go())


def test_leases_never_let_two_processes_pass_the_limit(redis_server):
    """rpm 40 and two processes admitting as fast as they can, concurrently: 40 admitted in all,
    both processes among them, the rest refused with a retry within the minute; a lease is at
    most LEASE_SHARE of the limit, so neither process takes it all."""
    async def go():
        a, b, (day, month) = RedisState(redis_server.url), RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", rpm=40)
        admitted, refusals, leased = {"a": 0, "b": 0}, [], [0]

        async def send(name, state, n):
            for i in range(n):
                refused, _ = await state.admit(key, 0.0, f"{name}{i}-{time.monotonic_ns()}", day, month)
                if refused is None:
                    admitted[name] += 1
                else:
                    refusals.append(refused)
                leased.extend(lease.slots for lease in state.leases.values())
                await asyncio.sleep(0)

        await asyncio.gather(*(send(n, s, 40) for n, s in (("a", a), ("b", b), ("a", a), ("b", b))))
        assert sum(admitted.values()) <= 40 and min(admitted.values()) > 0
        assert all(r.limit == "rpm" and 0 < r.retry_after_s <= 60 for r in refusals)
        assert max(leased, default=0) <= 40 * LEASE_SHARE
        await a.close()
        await b.close()
        # Once both have given back what they did not use, the window holds exactly those admitted.
        check = RedisState(redis_server.url)
        assert await check.redis.call("ZCARD", "herd:rpm:k") == sum(admitted.values())
        await check.close()

    run(go())


def test_a_lease_returned_twice_is_counted_once(redis_server):
    """The return of a lease's leftovers carries the lease's id: sent again after a lost reply,
    it does not give back twice."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", day_usd=10.0)
        for i in range(20):
            assert (await state.admit(key, 0.01, f"r{i}", day, month))[0] is None
        lease = state.leases["k"]
        state._give_back("k")
        (script, command), = state.pending
        assert script is state._return
        replies = await state._run_all([(script, command), (script, command)])
        assert replies == [1, 0]
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert float(budget["held"]) == pytest.approx(20 * 0.01)  # the 20 admitted, nothing of the lease
        assert lease.usd > 0
        state.pending.clear()
        await state.close()

    run(go())


def test_many_requests_at_once_leave_nothing_stranded(redis_server):
    """Waves of 50 admissions at once in one process: one lease is on its way at a time (the
    others ask for themselves only), a lease replaced is given back, and once all have settled
    and the leases have ended the window holds exactly those admitted and nothing stays held."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", rpm=10_000, day_usd=100.0)
        admitted = []
        for wave in range(5):
            ids = [f"w{wave}-{i}" for i in range(50)]
            got = await asyncio.gather(*(state.admit(key, 0.01, rid, day, month) for rid in ids))
            admitted += [(rid, by) for rid, (refused, by) in zip(ids, got) if refused is None]
        assert len(admitted) == 250
        for rid, by in admitted:
            state.settle(charge(rid, 0.01, 0.004, held_by=by))
        await asyncio.sleep(LEASE_S)
        await until(lambda: not state.leases and not state.pending and not state.carried)
        assert await state.redis.call("ZCARD", "herd:rpm:k") == 250
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert {k: float(v) for k, v in budget.items()} == pytest.approx({"spent": 1.0, "held": 0.0}, abs=1e-9)
        await state.close()

    run(go())


@pytest.mark.parametrize("lost", ["cancelled", "late reply"])
def test_a_lease_whose_reply_is_lost_goes_back_whole(redis_server, lost):
    """Redis granted a lease but the request never read the reply (cancelled, or the reply came
    after the timeout): everything granted goes back, so nothing stays counted but what was
    admitted and answered."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", rpm=1000, day_usd=100.0)
        for i in range(30):  # a busy key
            assert (await state.admit(key, 0.01, f"r{i}", day, month))[0] is None
        await until(lambda: not state.leases)  # the next admission is a round trip asking for a lease
        for _ in range(5):
            state._busy("k", time.monotonic())
        pipeline = state.redis.pipeline

        async def late(commands):  # Redis runs the script; its reply does not arrive in time
            replies = await pipeline(commands)
            await asyncio.sleep(0.05)
            if lost == "late reply":
                raise TimeoutError("no reply within the timeout")
            return replies

        state.redis.pipeline = late
        request = asyncio.create_task(state.admit(key, 0.01, "lost", day, month))
        await asyncio.sleep(0.02)
        if lost == "cancelled":
            request.cancel()
        with pytest.raises(asyncio.CancelledError) if lost == "cancelled" else contextlib.nullcontext():
            refused, by = await request
            assert refused is None and by == "local"  # fail open: this process's own limits
        state.redis.pipeline = pipeline
        state.up = True
        for i in range(30):
            state.settle(charge(f"r{i}", 0.01, 0.004))
        await until(lambda: not state.pending and not state.carried)
        # Served with this process's own limits after a late reply, the request keeps its slot;
        # its worst case is held here, so all the lease's budget goes back.
        assert await state.redis.call("ZCARD", "herd:rpm:k") == (30 if lost == "cancelled" else 31)
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert {k: float(v) for k, v in budget.items()} == pytest.approx({"spent": 0.12, "held": 0.0}, abs=1e-9)
        await state.close()

    run(go())


def test_an_admission_after_its_lease_went_back_takes_no_lease(redis_server):
    """A lost reply's return can reach Redis before the admission it answers (another
    connection): the admission then grants the request alone, so nothing is left stranded."""
    async def go():
        state, (day, month) = RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", rpm=1000, day_usd=100.0)
        state._return_lease("k", "early", day, month, used=0, taken=0.0)
        await state._write_pending()
        for _ in range(5):
            state._busy("k", time.monotonic())
        assert (await state.admit(key, 0.01, "early", day, month)) == (None, "shared")
        assert not state.leases
        assert await state.redis.call("ZCARD", "herd:rpm:k") == 1
        budget = await state.redis.call("HGETALL", f"herd:budget:k:d:{day}")
        assert float(budget["held"]) == pytest.approx(0.01)
        await state.close()

    run(go())


def test_a_budget_refusal_waits_for_another_process_lease_to_go_back(redis_server):
    """Near the end of a budget, process A's lease holds part of what is left; process B's
    request, which would fit once A's lease goes back, is admitted after the recheck instead of
    being refused until tomorrow."""
    async def go():
        a, b, (day, month) = RedisState(redis_server.url), RedisState(redis_server.url), periods()
        key = ClientKey("k", b"s", day_usd=1.0)
        await a.redis.call("HSET", f"herd:budget:k:d:{day}", "spent", "0.99", "held", "0")
        for i in range(3):  # busy in A: a lease of at most half what is left
            for _ in range(3):
                a._busy("k", time.monotonic())
            assert (await a.admit(key, 0.001, f"a{i}", day, month))[0] is None
            a.settle(charge(f"a{i}", 0.001, 0.001))
        assert "k" in a.leases
        refused, _ = await b.admit(key, 0.006, "b1", day, month)
        assert refused is None
        await a.close()
        await b.close()

    run(go())
