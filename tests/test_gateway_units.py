"""The gateway's parts without a server: request checks, eligibility, routing order, circuit breaker."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from herd import artifact
from herd.data import Outcomes
from herd.backends import Circuit
from herd.gateway.chat import parse_chat
from herd.gateway.errors import GatewayError
from herd.gateway.selection import Selector
from herd.policies import ArgMax
from herd.pool import PoolConfig, PoolError
from herd.routers import make_router

MATH_Q = "add the numbers math question number 3"


def chat(**fields) -> bytes:
    body = {"model": "herd", "messages": [{"role": "user", "content": MATH_Q}], **fields}
    return json.dumps(body).encode()


@pytest.mark.parametrize("raw, status, text", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    (json.dumps({"messages": [{"role": "user", "content": "x"}]}).encode(), 400, "'model' is required"),
    (json.dumps({"model": "herd"}).encode(), 400, "'messages' must be a non-empty list"),
    (json.dumps({"model": "herd", "messages": []}).encode(), 400, "'messages' must be a non-empty list"),
    (json.dumps({"model": "herd", "messages": ["hi"]}).encode(), 400, "messages[0] must be an object"),
    (json.dumps({"model": "herd", "messages": [{"role": "wizard", "content": "x"}]}).encode(), 400, "messages[0].role"),
    (json.dumps({"model": "herd", "messages": [{"role": "user", "content": 5}]}).encode(), 400, "messages[0].content"),
    (b'{"model": "herd", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "nested too deeply"),
    (b'{"model": "herd", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}', 400, "NaN is not a JSON number"),
    (chat(stream="yes"), 400, "'stream' must be a boolean"),
    (chat(max_tokens=0), 400, "'max_tokens' must be a positive integer"),
    (chat(n="2"), 400, "'n' must be an integer from 1 to 128"),
    # The originals: 500s with two tracebacks, or no answer at all (n = 10**400 with no router).
    (chat(n=10**400), 400, "'n' must be an integer from 1 to 128"),
    (chat(max_tokens=10**400), 400, "'max_tokens' must be a positive integer"),
    (chat(seed="abc"), 400, "'seed' must be a 64-bit integer"),
    (chat(seed=[1]), 400, "'seed' must be a 64-bit integer"),
    (chat(seed=2**64), 400, "'seed' must be a 64-bit integer"),
    (chat(temperature=3), 400, "'temperature' must be a number from 0 to 2"),
    (chat(top_p=-0.1), 400, "'top_p' must be a number from 0 to 1"),
    (chat().replace(b'"model"', b'"temperature": 1e999, "model"'), 400, "1e999 is not a finite number"),
    (chat().replace(b'"model"', b'"seed": 1e999, "model"'), 400, "1e999 is not a finite number"),
    (chat().replace(b'"model"', b'"logit_bias": {"1": -1e400}, "model"'), 400, "-1e400 is not a finite number"),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]), 400,
     "messages[0].content[0].text must be a string"),
    (chat(temperature="hot"), 400, "'temperature' must be a number"),
    (chat(herd=[1]), 400, "'herd' must be an object"),
    (chat(herd={"max_cost": 1}), 400, "unknown herd option(s) ['max_cost']"),
    (chat(herd={"max_cost_usd": -1}), 400, "herd.max_cost_usd must be a number >= 0"),
    (chat(herd={"private": "maybe"}), 400, "herd.private must be true or false"),
    (chat(metadata={"herd_max_cost_usd": "lots"}), 400, "metadata.herd_max_cost_usd must be a number"),
])
def test_bad_requests_say_what_is_wrong(raw, status, text):
    with pytest.raises(GatewayError) as e:
        parse_chat(raw)
    assert e.value.status == status and text in e.value.message
    body = json.loads(e.value.response().body)
    assert set(body["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("value, private", [
    (True, True), (1, True), ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
    (False, False), (0, False), ("0", False), ("false", False), ("No", False), ("off", False)])
def test_private_flag_spellings(value, private):
    for req in (parse_chat(chat(herd={"private": value})), parse_chat(chat(metadata={"herd_private": value})),
                parse_chat(chat(), {"x-herd-private": str(value)})):
        assert req.options.private is private and ("on_prem" in req.options.tags) is private


@pytest.mark.parametrize("fields, headers, param", [
    ({"herd": {"private": "maybe"}}, {}, "herd.private"),
    ({"herd": {"private": 2}}, {}, "herd.private"),
    ({"herd": {"private": None}}, {}, "herd.private"),
    ({"metadata": {"herd_private": "y"}}, {}, "metadata.herd_private"),
    ({"metadata": {"herd_private": ""}}, {}, "metadata.herd_private"),
    ({}, {"x-herd-private": "private"}, "x-herd-private"),
    ({"Herd": {"private": True}}, {}, "Herd"),
    ({"HERD": {"private": True}}, {}, "HERD"),
    ({"herd_private": True}, {}, "herd_private"),
    ({"metadata": {"HERD_PRIVATE": "1"}}, {}, "metadata.HERD_PRIVATE"),
    ({"metadata": {"Herd-Private": "1"}}, {}, "metadata.Herd-Private"),
    ({"metadata": {"herd": "private"}}, {}, "metadata.herd"),
    ({}, {"x-herd-privacy": "on"}, "x-herd-privacy"),
])
def test_unclear_privacy_fails_closed_with_a_400_naming_the_field(fields, headers, param):
    with pytest.raises(GatewayError) as e:
        parse_chat(chat(**fields), headers)
    assert e.value.status == 400 and e.value.param == param and param in e.value.message


def test_private_from_any_source_wins():
    assert parse_chat(chat(herd={"private": False}, metadata={"herd_private": "on"})).options.private
    assert parse_chat(chat(herd={"private": False}), {"x-herd-private": "yes"}).options.private


def test_request_keeps_unknown_fields_and_strips_herd_options():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    req = parse_chat(chat(tools=tools, stop=["\n"], seed=7, herd={"private": True, "exclude": "big-70b"},
                          metadata={"herd_max_cost_usd": "0.5", "team": "a"}))
    assert req.body["tools"] == tools and req.body["stop"] == ["\n"] and req.body["seed"] == 7
    assert "herd" not in req.body and req.body["metadata"] == {"team": "a"}
    assert req.options.tags == ("on_prem",) and req.options.exclude == ("big-70b",) and req.options.max_cost_usd == 0.5


def test_router_reads_recent_user_turns_last():
    messages = [{"role": "system", "content": "you are helpful"}, {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url", "image_url": {}}]}]
    req = parse_chat(json.dumps({"model": "herd", "messages": messages, "max_tokens": 100}).encode())
    assert req.router_text == "first\nsecond"
    assert req.window_tokens() > 100 and req.n_messages == 4


def test_valid_shapes_that_are_not_plain_user_turns():
    req = parse_chat(json.dumps({"model": "herd", "stream": None,
                                 "messages": [{"role": "system", "content": "summarize the ancient dynasty"}]}).encode())
    assert req.stream is False and req.router_text == "summarize the ancient dynasty"


def test_window_estimate_counts_tools_tool_calls_images_and_wide_scripts():
    base = parse_chat(chat())
    cjk = parse_chat(chat(messages=[{"role": "user", "content": "数" * 900}]))
    assert cjk.window_tokens() >= 900  # one token per character, not one per three
    tools = [{"type": "function", "function": {"name": "f", "description": "d" * 3000, "parameters": {}}}]
    assert parse_chat(chat(tools=tools)).window_tokens() >= base.window_tokens() + 1000
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                                  "function": {"name": "f", "arguments": "a" * 3000}}]}
    with_call = parse_chat(chat(messages=[{"role": "user", "content": MATH_Q}, call,
                                          {"role": "tool", "tool_call_id": "1", "content": "ok"}]))
    assert with_call.window_tokens() >= 1000
    image = {"role": "user", "content": [{"type": "text", "text": MATH_Q}, {"type": "image_url", "image_url": {"url": "x"}}]}
    assert parse_chat(chat(messages=[image])).window_tokens() >= base.window_tokens() + 1000


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import make_frames

    m = Outcomes.from_frames(*make_frames()).matrix()
    return artifact.train("logistic", make_router("logistic"), ArgMax(), m)


def pool(**overrides) -> PoolConfig:
    models = [
        {"name": "math-7b", "base_url": "http://127.0.0.1:1/v1", "tags": ["open", "on_prem"], "context_window": 64,
         "price_in_per_mtok": 0.1, "price_out_per_mtok": 0.1},
        {"name": "hist-7b", "base_url": "http://127.0.0.1:2/v1", "tags": ["open", "on_prem"],
         "price_in_per_mtok": 0.1, "price_out_per_mtok": 0.2},
        {"name": "big-70b", "base_url": "http://127.0.0.1:3/v1", "price_in_per_mtok": 5, "price_out_per_mtok": 15},
        {"name": "extra", "base_url": "http://127.0.0.1:4/v1"},
    ]
    return PoolConfig.model_validate({"models": models, **overrides})


def test_routes_to_the_topic_expert_with_fallbacks_in_score_order(trained):
    sel = Selector(pool(), trained, {"herd": trained.policy})
    plan = sel.plan(parse_chat(chat()))
    assert plan.candidates[0] == "math-7b" and "highest predicted P(correct)" in plan.reason
    assert plan.candidates[-1] == "extra"  # not scored by the router: last resort
    scored = [plan.scores[m] for m in plan.candidates[1:3]]
    assert scored == sorted(scored, reverse=True)
    assert set(plan.scores) == {"math-7b", "hist-7b", "big-70b"}


def test_constraints_are_never_violated(trained):
    sel = Selector(pool(), trained, {"herd": trained.policy})
    long = chat(messages=[{"role": "user", "content": MATH_Q + " " + "x" * 400}])
    plan = sel.plan(parse_chat(long))
    assert "math-7b" not in plan.candidates and "context window is 64" in plan.ineligible["math-7b"]
    private = sel.plan(parse_chat(chat(herd={"private": True})))
    assert set(private.candidates) <= {"math-7b", "hist-7b"} and "lacks tag(s) ['on_prem']" in private.ineligible["big-70b"]
    cheap = sel.plan(parse_chat(chat(herd={"max_cost_usd": 0.001}, max_tokens=100)))
    assert "big-70b" in cheap.ineligible and "extra" in cheap.ineligible and "big-70b" not in cheap.candidates
    assert "hist-7b" in cheap.candidates
    one = sel._ineligible(sel.by_name["hist-7b"], parse_chat(chat(herd={"max_cost_usd": 0.0001}, max_tokens=100)))
    ten = sel._ineligible(sel.by_name["hist-7b"], parse_chat(chat(herd={"max_cost_usd": 0.0001}, max_tokens=100, n=10)))
    assert one is None and "exceeds the ceiling" in ten  # ten completions cost ten times one
    excluded = sel.plan(parse_chat(chat(herd={"exclude": ["math-7b"]})))
    assert excluded.candidates[0] != "math-7b"
    with pytest.raises(GatewayError) as e:
        sel.plan(parse_chat(chat(herd={"tags": ["gpu-free"]})))
    assert e.value.status == 400 and e.value.code == "no_eligible_model"
    with pytest.raises(GatewayError) as e:
        sel.plan(parse_chat(chat(model="big-70b", herd={"private": True})))
    assert e.value.status == 400 and "lacks tag" in e.value.message
    with pytest.raises(GatewayError) as e:
        sel.plan(parse_chat(chat(model="gpt-5")))
    assert e.value.status == 404 and e.value.code == "model_not_found"


def test_named_models_bypass_routing(trained):
    plan = Selector(pool(), trained, {"herd": trained.policy}).plan(parse_chat(chat(model="big-70b")))
    assert plan.candidates == ["big-70b"] and plan.reason == "requested by name"


def test_policies_from_the_pool_file_are_tuned_on_the_routers_validation_scores(tmp_path, trained):
    artifact.save(trained, tmp_path / "router")
    cfg = pool(router="router", policy="safe", policies={"thrifty": {"name": "cost-aware", "cost_weight": 5},
                                                         "budget": "budget:0.0001"})
    sel = Selector.from_config(cfg, tmp_path / "router")
    assert sel.route_names == ["herd", "herd:thrifty", "herd:budget"]
    assert sel.policies["herd"].anchor_ == trained.models.index("big-70b")  # fitted: the best single model
    assert sel.plan(parse_chat(chat(model="herd:thrifty"))).candidates[0] != "big-70b"
    with pytest.raises(PoolError, match="policy 'herd': policy needs 'name'"):
        Selector.from_config(pool(router="router", policy={"cost_weight": 1}), tmp_path / "router")
    with pytest.raises(PoolError, match="sets a policy but no router"):
        Selector.from_config(pool(policy="argmax"), None)


def test_safe_policy_whose_anchor_is_ineligible_takes_the_best_eligible(tmp_path, trained):
    artifact.save(trained, tmp_path / "router")
    sel = Selector.from_config(pool(router="router", policy="safe:0.99"), tmp_path / "router")
    plan = sel.plan(parse_chat(chat(herd={"private": True})))
    assert plan.candidates[0] == "math-7b" and "best single model big-70b cannot take this request" in plan.reason


def test_without_a_router_the_pool_order_is_the_preference():
    plan = Selector(pool()).plan(parse_chat(chat()))
    assert plan.candidates == ["math-7b", "hist-7b", "big-70b", "extra"]


def test_circuit_opens_after_consecutive_failures_and_tries_once_after_cooldown():
    c = Circuit(failures=3, cooldown_s=0.05)
    for _ in range(2):
        c.failed()
    assert c.allow() and c.state == "closed"
    c.succeeded()
    for _ in range(3):
        c.failed()
    assert c.state == "open" and not c.allow()
    time.sleep(0.06)
    assert c.state == "half-open" and c.allow() and not c.allow()  # one trial call at a time
    c.failed()
    assert c.state == "open" and c.opens == 2
    time.sleep(0.06)
    assert c.allow()
    c.succeeded()
    assert c.state == "closed" and c.allow()


def test_a_cascade_in_the_gateway_never_picks_an_ineligible_model(tmp_path, trained):
    artifact.save(trained, tmp_path / "router")
    sel = Selector.from_config(pool(router="router", policies={"owned": "cascade:hist-7b,big-70b"}), tmp_path / "router")
    assert sel.plan(parse_chat(chat(model="herd:owned", messages=[{"role": "user", "content": "which emperor ruled rome"}]))
                    ).candidates[0] == "hist-7b"
    plan = sel.plan(parse_chat(chat(model="herd:owned", herd={"private": True})))  # a math question: defers to big-70b
    assert plan.candidates[0] == "math-7b" and "the policy's choice big-70b cannot take this request" in plan.reason
    assert "big-70b" not in plan.candidates


def test_choice_log_writes_session_text_only_when_asked_and_never_for_private_requests(tmp_path):
    from herd.gateway.choices import ChoiceLog

    plain, asked = ChoiceLog(tmp_path / "a.jsonl", "k" * 16), ChoiceLog(tmp_path / "b.jsonl", "k" * 16, session_text=True)
    for log in (plain, asked):
        log.write({"turn": 1}, "hello there", private=False)
        log.write({"turn": 1}, "private words", private=True)
        log.close()
    a, b = ([json.loads(x) for x in (tmp_path / f).read_text().splitlines()] for f in ("a.jsonl", "b.jsonl"))
    assert "hello" not in json.dumps(a) and "private words" not in json.dumps(b)
    assert a[0]["session"] == b[0]["session"] != a[1]["session"] and b[0]["session_text"] == "hello there"
    assert ChoiceLog(tmp_path / "c.jsonl", "other" * 4).session_id("hello there") != a[0]["session"]


def test_non_finite_backend_numbers_are_missing():
    from herd.backends import read_json, token_count

    data = read_json(b'{"usage": {"prompt_tokens": 1e999, "completion_tokens": NaN, "total_tokens": -Infinity}}')
    assert data["usage"] == {"prompt_tokens": None, "completion_tokens": None, "total_tokens": None}
    assert [token_count(v) for v in (float("inf"), 10**400, -1, "3", True, 7)] == [None] * 5 + [7.0]


def test_an_unforeseen_error_is_a_counted_500_in_openais_shape_with_one_log_line(caplog):
    """In-process: no request value is left that breaks herd, so a selector is made to."""
    import asyncio

    import httpx

    from herd.gateway import telemetry as tm
    from herd.gateway.app import create_app

    class Broken(Selector):
        def plan(self, req):
            raise ZeroDivisionError("a prompt text that must not be logged")

    app = create_app(pool(), Broken(pool()))
    before = tm.REQUESTS.labels("rejected", "500")._value.get()  # failed before a route was chosen

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://herd") as c:
            return await c.post("/v1/chat/completions", content=chat())

    with caplog.at_level("INFO", logger="herd.gateway"):
        r = asyncio.run(post())
    assert r.status_code == 500 and r.json()["error"]["code"] == "internal_error"
    rid = r.headers["x-herd-request-id"]
    assert rid in r.json()["error"]["message"] and tm.REQUESTS.labels("rejected", "500")._value.get() == before + 1
    (record,) = [rec for rec in caplog.records if rec.name == "herd.gateway"]
    line = record.getMessage()
    assert rid in line and "ZeroDivisionError" in line and "prompt" not in line and record.exc_info is None


def test_the_task_reaches_a_task_aware_router_and_safes_per_task_anchor(tmp_path):
    """A mixture where the words say nothing: only the request's task can route."""
    import sys

    from herd.policies import SafeArgMax

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_mixture import _mixture

    m = _mixture(with_text=False).mixtures()[0].matrix()
    trained = artifact.train("logistic-task", make_router("logistic-task"), SafeArgMax(), m)
    artifact.save(trained, tmp_path / "r")
    pool = PoolConfig.model_validate({"router": str(tmp_path / "r"), "models": [
        {"name": name, "base_url": "http://127.0.0.1:9/v1"} for name in m.models]})
    selector = Selector.from_config(pool, tmp_path / "r")
    ask = lambda task: selector.plan(parse_chat(chat(herd={"task": task} if task else {})))  # noqa: E731
    assert ask("math").candidates[0] == "mathy" and ask("code").candidates[0] == "cody"
    assert "best model for task code" in ask("code").reason
    assert ask(None).candidates[0] == m.models[trained.policy.anchor_]  # no task: the overall anchor
    by_metadata = selector.plan(parse_chat(chat(metadata={"herd_task": "code"})))
    assert by_metadata.candidates[0] == "cody"
    with pytest.raises(GatewayError, match="herd.task must be a task name"):
        parse_chat(chat(herd={"task": 5}))


def test_a_router_model_missing_from_the_pool_stops_the_start_unless_mapped_or_left_out(tmp_path, trained):
    """The original: a pool naming gpt-4o for the router's gpt-4o-2024-08-06 started, and that
    model could never be chosen."""
    artifact.save(trained, tmp_path / "router")
    renamed = pool(router="router")
    models = [m.model_dump(exclude_defaults=True) for m in renamed.models]
    models[2]["name"] = "big"  # the router knows it as big-70b
    with pytest.raises(PoolError) as e:
        Selector.from_config(PoolConfig.model_validate({"models": models}), tmp_path / "router")
    assert "does not name: big-70b (closest in the pool: big)" in str(e.value) and "router_name" in str(e.value)
    models[2]["router_name"] = "big-70b"
    sel = Selector.from_config(PoolConfig.model_validate({"models": models}), tmp_path / "router")
    plan = sel.plan(parse_chat(chat(messages=[{"role": "user", "content": "a question on nothing in particular"}])))
    assert plan.candidates[0] == "big" and set(plan.scores) == {"math-7b", "hist-7b", "big"}
    assert "big-70b" not in plan.reason  # the reason names pool models
    # Left out on purpose, by name: the router's other models still route.
    left_out = PoolConfig.model_validate({"models": models[:2], "not_served": ["big-70b"]})
    plan = Selector.from_config(left_out, tmp_path / "router").plan(parse_chat(chat()))
    assert plan.candidates == ["math-7b", "hist-7b"]
    with pytest.raises(ValueError, match="two pool models stand for the router's 'big-70b'"):
        PoolConfig.model_validate({"models": [*models, {**models[2], "name": "big-2"}]})


class _Client:
    """The ASGI receive of a request whose client leaves after ``leaves_s`` (None: stays)."""

    def __init__(self, leaves_s):
        self.leaves_s = leaves_s

    async def receive(self):
        if self.leaves_s is None:
            await asyncio.Event().wait()
        await asyncio.sleep(self.leaves_s)
        return {"type": "http.disconnect"}


def test_a_client_gone_cancels_the_work_and_nothing_else():
    """The work runs in the request's own task: a client gone mid-work is a 499, a cancellation
    the work swallows leaves no cancellation pending, and a cancellation from elsewhere (the
    server's shutdown) goes through."""
    from herd.gateway.app import _unless_disconnected

    async def slow():
        await asyncio.sleep(5)
        return "answered"

    async def swallows():
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass
        return "answered anyway"

    async def main():
        gone = await _unless_disconnected(_Client(0.01), slow())
        assert gone.status_code == 499
        assert await _unless_disconnected(_Client(0.01), swallows()) == "answered anyway"
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0)  # no cancellation left to land here
        assert await _unless_disconnected(_Client(None), asyncio.sleep(0, "quick")) == "quick"

        request = asyncio.ensure_future(_unless_disconnected(_Client(None), slow()))
        await asyncio.sleep(0.01)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request

    asyncio.run(asyncio.wait_for(main(), 10))
