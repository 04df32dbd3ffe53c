"""Off-policy estimates on hand-made logs whose true values are known."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from live_logs import COSTS, MODELS, RATES, record, feedback, simulate, true_value, write_lines

from herd import choicelog, offpolicy
from herd.data import HerdDataError, Outcomes
from herd.policies import make_policy
from herd.routers import make_router

BEST = {"math": 0, "history": 1, "code": 2}


def herd(*args):
    return subprocess.run([sys.executable, "-m", "herd", *args], capture_output=True, text=True, timeout=300)


def logged(tmp_path, choices, fb, name="live"):
    frames, _ = choicelog.join(write_lines(tmp_path / f"{name}-c.jsonl", choices),
                               write_lines(tmp_path / f"{name}-f.jsonl", fb))
    out = Outcomes(*frames).save(tmp_path / name)
    return out, offpolicy.LoggedTraffic.from_outcomes(Outcomes.load(out, min_outcomes=1))


def topics_of(log, choices, topics):
    by_id = dict(zip((c["request_id"] for c in choices), topics))
    return [by_id[q] for q in log.matrix.keys["qid"]]


def picks(log, names):
    return np.array([log.models.index(n) for n in names])


def estimates(log, choice):
    splits = log.matrix.kfold(5, 0)
    q_cost = np.tile([COSTS[MODELS.index(m)] for m in log.models], (log.n, 1))
    return offpolicy.estimate(log, choice, offpolicy.reward_model(log, splits), q_cost)


RULES = {"always big-70b": lambda t: "big-70b", "always math-7b": lambda t: "math-7b",
         "each topic's best": lambda t: MODELS[BEST[t]]}
SEEDS = 10


@pytest.mark.parametrize("eps, prefer", [(1.0, lambda t: 0), (0.3, lambda t: BEST[t])],
                         ids=["uniform-random", "epsilon-greedy"])
def test_estimates_land_within_their_intervals_of_the_truth(tmp_path, eps, prefer):
    """Over 10 independent logs, each 95% interval holds the true value at least 8 times (by
    chance that fails with probability about 1%), the intervals are narrow, and the errors
    average out near 0."""
    held = {(rule, kind, what): 0 for rule in RULES for kind in ("ips", "snips", "dr") for what in ("score", "cost")}
    errors = {key: [] for key in held}
    for seed in range(SEEDS):
        choices, fb, topics = simulate(1500, eps, prefer, seed=100 + seed)
        _, log = logged(tmp_path, choices, fb, name=f"live{seed}")
        tq = topics_of(log, choices, topics)
        q_score = offpolicy.reward_model(log, log.matrix.kfold(5, 0))
        q_cost = np.tile([COSTS[MODELS.index(m)] for m in log.models], (log.n, 1))
        for rule, pick in RULES.items():
            names = [pick(t) for t in tq]
            truth = dict(zip(("score", "cost"), true_value(tq, [MODELS.index(n) for n in names])))
            res = offpolicy.estimate(log, picks(log, names), q_score, q_cost)
            assert res.coverage == 1.0 and not res.too_thin
            for what, found in (("score", res.score), ("cost", res.cost)):
                for kind, e in found.items():
                    held[(rule, kind, what)] += e.low - 1e-12 <= truth[what] <= e.high + 1e-12
                    errors[(rule, kind, what)].append(e.value - truth[what])
                    assert e.high - e.low < (0.25 if what == "score" else 0.005), (rule, kind, what, e)
    assert min(held.values()) >= 8, held
    for (rule, kind, what), errs in errors.items():
        assert abs(np.mean(errs)) < (0.03 if what == "score" else 0.0005), (rule, kind, what, np.mean(errs))


def test_the_naive_mean_of_matching_requests_is_biased_and_the_estimates_are_not(tmp_path):
    # The policy sends each topic to its best model: where it picked big-70b is mostly code,
    # big-70b's best topic, so averaging the requests it answered overrates always-big-70b.
    choices, fb, topics = simulate(3000, 0.3, lambda t: BEST[t], seed=3)
    _, log = logged(tmp_path, choices, fb)
    tq = topics_of(log, choices, topics)
    truth, _ = true_value(tq, [2] * log.n)
    choice = picks(log, ["big-70b"] * log.n)
    naive = log.reward[choice == log.action].mean()
    res = estimates(log, choice)
    assert naive - truth > 0.08
    for kind, e in res.score.items():
        assert e.low <= truth <= e.high, (kind, e)
    assert res.score["snips"].high < naive and res.score["dr"].high < naive  # IPS's interval is the wide one


def test_a_candidate_identical_to_the_logging_policy_gets_its_observed_mean(tmp_path):
    choices, fb, _ = simulate(400, 0.0, lambda t: BEST[t], seed=4)  # no exploration: propensity 1
    _, log = logged(tmp_path, choices, fb)
    res = estimates(log, log.action)
    assert res.coverage == 1.0 and res.matched == log.n and res.ess == pytest.approx(log.n)
    for e in res.score.values():
        assert e.value == pytest.approx(log.reward.mean())
    assert res.difference.value == pytest.approx(0.0, abs=1e-12)
    assert "not told apart" in res.verdict


def test_no_exploration_cannot_tell_another_policy(tmp_path):
    choices, fb, _ = simulate(400, 0.0, lambda t: BEST[t], seed=5)
    _, log = logged(tmp_path, choices, fb)
    other = (log.action + 1) % len(log.models)  # never what was logged
    res = estimates(log, other)
    assert res.coverage == 0.0 and not res.score and "cannot be evaluated" in res.verdict
    half = np.where(np.arange(log.n) % 2 == 0, log.action, picks(log, ["big-70b"] * log.n))
    res = estimates(log, half)  # agrees with the log on half the requests (and where big-70b was picked)
    assert 0.5 <= res.coverage < 1.0 and f"covers {res.coverage:.0%} of requests" in res.verdict
    # No estimate outside the support is claimed: without exploration the supported requests are
    # the matching ones, and every estimate is their observed mean, never the other requests'.
    same = half == log.action
    assert res.coverage == same.mean() and res.matched == same.sum()
    for e in res.score.values():
        assert e.value == pytest.approx(log.reward[same].mean())
    assert log.reward[same].mean() != pytest.approx(log.reward.mean())


def test_thin_exploration_is_reported_as_too_thin(tmp_path):
    choices, fb, _ = simulate(300, 0.02, lambda t: 2, seed=6)  # 2% exploration over 3 models
    _, log = logged(tmp_path, choices, fb)
    res = estimates(log, picks(log, ["math-7b"] * log.n))
    assert res.coverage == 1.0 and res.too_thin and res.ess < offpolicy.MIN_ESS
    assert "too little exploration to tell" in res.verdict


def test_allowed_sets_bound_the_support(tmp_path):
    # On the second half hist-7b was not allowed (a private request, say): exploring could not reach it.
    rng = np.random.default_rng(7)
    choices, fb = [], []
    for i in range(400):
        allowed = MODELS if i < 200 else ["math-7b", "big-70b"]
        a = allowed[rng.integers(len(allowed))]
        choices.append(record(f"r{i}", f"question {i}", a, propensity=1 / len(allowed), allowed=allowed,
                              explored=True))
        fb.append(feedback(f"r{i}", float(rng.random() < 0.5)))
    _, log = logged(tmp_path, choices, fb)
    res = estimates(log, picks(log, ["hist-7b"] * log.n))
    assert res.coverage == 0.5 and "covers 50% of requests" in res.verdict
    res = estimates(log, picks(log, ["math-7b"] * log.n))
    assert res.coverage == 1.0 and res.score["ips"].low <= 0.5 <= res.score["ips"].high
    res = estimates(log, np.full(log.n, -1))  # a model the log never saw
    assert res.coverage == 0.0 and "cannot be evaluated" in res.verdict


def no_hist_on(rows):
    """Allowed models per request: hist-7b ruled out (a private request, say) on history ``rows``."""
    return lambda topic, i: ["math-7b", "big-70b"] if topic == "history" and rows(i) else MODELS


def test_candidates_pick_among_the_allowed_models(tmp_path):
    """Where hist-7b was not allowed, argmax and a cascade of math-7b then big-70b are served
    alike (big-70b answers history): they get the same estimates, over every request."""
    from dataclasses import replace

    from servers import train_toy_router

    from herd import artifact

    choices, fb, topics = simulate(900, 0.5, lambda t: 2, seed=12, allowed=no_hist_on(lambda i: True))
    live, log = logged(tmp_path, choices, fb)
    argmax = artifact.load(train_toy_router(tmp_path / "router"))
    cascade = replace(argmax, policy=argmax.fit_policy(make_policy("cascade:math-7b,big-70b@0.5")))
    # The premise: unconstrained, they differ on history, where argmax picks hist-7b.
    tq = np.array(topics_of(log, choices, topics))
    apart = argmax.route(log.matrix.texts)[1].choice != cascade.route(log.matrix.texts)[1].choice
    assert apart.any() and set(tq[apart]) == {"history"}
    result = offpolicy.evaluate_log(Outcomes.load(live, min_outcomes=1), {"a": argmax, "b": cascade})
    a, b = (c.to_json() for c in result.candidates)
    assert a["coverage"] == 1.0 and {**a, "name": "b"} == b
    assert "hist-7b" not in a["shares"]


def test_a_cross_fitted_router_picks_among_the_allowed_models(tmp_path):
    # hist-7b was allowed on half the history requests: the router learns it is best there, and
    # on the other half picks among what was allowed.
    choices, fb, topics = simulate(900, 0.5, lambda t: 2, seed=13, allowed=no_hist_on(lambda i: i % 2 == 0))
    _, log = logged(tmp_path, choices, fb)
    choice = offpolicy.crossfit_choices(log, make_router("logistic"), make_policy("argmax"), log.matrix.kfold(5, 0))
    assert log.allowed[np.arange(log.n), choice].all()
    tq = np.array(topics_of(log, choices, topics))
    hist = log.models.index("hist-7b")
    open_history = (tq == "history") & log.allowed[:, hist]
    assert (choice[open_history] == hist).mean() > 0.6  # it learnt hist-7b is best where it could go
    assert estimates(log, choice).coverage == 1.0


def test_cross_fitted_router_on_the_log(tmp_path):
    choices, fb, topics = simulate(1500, 0.3, lambda t: 2, seed=8)
    _, log = logged(tmp_path, choices, fb)
    splits = log.matrix.kfold(5, 0)
    choice = offpolicy.crossfit_choices(log, make_router("logistic"), make_policy("argmax"), splits)
    tq = topics_of(log, choices, topics)
    truth, _ = true_value(tq, [MODELS.index(log.models[c]) for c in choice])
    assert truth > 0.8  # it learnt each topic's best model from the explored answers
    res = estimates(log, choice)
    assert res.score["dr"].low <= truth <= res.score["dr"].high and res.difference.low > 0
    with pytest.raises(ValueError, match="complete outcome tables"):
        offpolicy.crossfit_choices(log, make_router("logistic"), make_policy("safe"), splits)
    with pytest.raises(ValueError, match="cannot fit a log"):
        offpolicy.crossfit_choices(log, make_router("mf"), make_policy("argmax"), splits)


def test_costs_logged_on_a_few_requests_only(tmp_path):
    """One request with a cost: the fold holding it has none to learn from, so cost estimates
    are n/a and a note says why; the score estimates stand."""
    from herd.report import offpolicy_lines

    choices, fb, _ = simulate(300, 0.5, lambda t: 2, seed=14)
    for c in choices[1:]:
        c["cost_usd"] = None
    live, _ = logged(tmp_path, choices, fb)
    result = offpolicy.evaluate_log(Outcomes.load(live, min_outcomes=1),
                                    {"argmax": (make_router("logistic"), make_policy("argmax"))})
    (c,) = result.candidates
    assert c.score and not c.cost and result.logged_cost.value == choices[0]["cost_usd"]
    assert any("costs logged on 1 request(s) only" in n for n in result.notes)
    assert any("cost estimates are n/a" in line for line in offpolicy_lines(result))
    json.dumps(result.to_json(), allow_nan=False)


def test_benchmark_data_is_not_a_log(dataset_dir):
    with pytest.raises(HerdDataError, match="herd import choice-log"):
        offpolicy.LoggedTraffic.from_outcomes(Outcomes.load(dataset_dir))


def test_eval_off_policy_cli(tmp_path, dataset_dir):
    choices, fb, _ = simulate(600, 0.3, lambda t: 2, seed=9)
    live, _ = logged(tmp_path, choices, fb)
    r = herd("train", str(dataset_dir), "--router", "logistic", "--policy", "argmax", "-o", str(tmp_path / "router"))
    assert r.returncode == 0, r.stderr
    r = herd("eval", str(live), "--off-policy", "--policy", "argmax,cost-aware:0.5", "--candidate",
             str(tmp_path / "router"), "-o", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    assert "served (observed): score" in r.stdout and "logistic (cost-aware:0.5)" in r.stdout
    assert "DR " in r.stdout and "higher than the logging policy" in r.stdout
    result = json.loads((tmp_path / "report" / "offpolicy.json").read_text())
    assert result["requests"] == 600 and len(result["candidates"]) == 3
    assert {"ips", "snips", "dr"} == set(result["candidates"][0]["score"])
    page = (tmp_path / "report" / "offpolicy.html").read_text()
    assert "Off-policy estimates" in page and "served (observed)" in page
    r = herd("eval", str(live), "--off-policy", "--policy", "safe", "-o", str(tmp_path / "r2"))
    assert r.returncode == 2 and "complete outcome tables" in r.stderr and "Traceback" not in r.stderr
    r = herd("eval", str(dataset_dir), "--off-policy", "-o", str(tmp_path / "r3"))
    assert r.returncode == 2 and "herd import choice-log" in r.stderr
    r = herd("eval", str(live), "--off-policy", "--benchmark", "x", "-o", str(tmp_path / "r4"))
    assert r.returncode == 2 and "--benchmark: not for --off-policy" in r.stderr
    r = herd("eval", str(live), "--candidate", str(tmp_path / "router"), "-o", str(tmp_path / "r5"))
    assert r.returncode == 2 and "--candidate goes with --off-policy" in r.stderr


def test_a_candidate_asking_several_models_is_refused(tmp_path):
    """A checked cascade's answer stands after its first model's answer is read: the log's one
    answer per request cannot say what it would have scored."""
    from conftest import make_frames

    from herd import artifact

    q, o, models = make_frames()
    o["agreement"] = np.where(o["correct"] > 0, 1.0, 1 / 3)  # what the scorer reads of an answer
    m = Outcomes.from_frames(q, o, models).matrix()
    artifact.save(artifact.train("logistic", make_router("logistic"), make_policy("cascade-check:hist-7b,big-70b"), m),
                  tmp_path / "router")
    choices, fb, _ = simulate(200, 0.3, lambda t: 2, seed=11)
    live, _ = logged(tmp_path, choices, fb)
    r = herd("eval", str(live), "--off-policy", "--candidate", str(tmp_path / "router"), "-o", str(tmp_path / "report"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "cascade-check:hist-7b,big-70b asks several models per request" in r.stderr
    assert not (tmp_path / "report").exists()


def test_eval_off_policy_says_when_the_log_is_too_thin(tmp_path, dataset_dir):
    # Everything went to big-70b with 2% exploration; the candidate would send each topic to its specialist.
    choices, fb, _ = simulate(200, 0.02, lambda t: 2, seed=10)
    live, _ = logged(tmp_path, choices, fb)
    r = herd("train", str(dataset_dir), "--router", "logistic", "--policy", "argmax", "-o", str(tmp_path / "router"))
    assert r.returncode == 0, r.stderr
    r = herd("eval", str(live), "--off-policy", "--candidate", str(tmp_path / "router"), "-o", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    assert "too little exploration to tell" in r.stdout and "score: IPS" not in r.stdout  # no confident number
    page = (tmp_path / "report" / "offpolicy.html").read_text()
    assert "too little exploration to tell" in page
    assert json.loads((tmp_path / "report" / "offpolicy.json").read_text())["candidates"][0]["too_thin"]


# ---- the loop through `herd serve`: real processes on loopback -------------------------------
def test_the_loop_through_the_gateway(tmp_path):
    """Serve with exploration, both logs and prompt logging; send feedback by request id; import;
    evaluate off-policy. The import keeps every answered request with its logged propensity."""
    import httpx
    import openai
    from fake_backend import start_backend
    from live_logs import TOPICS
    from servers import pool_yaml, start_gateway, train_toy_router

    router = train_toy_router(tmp_path / "router")
    backends = {name: start_backend(name=name) for name in MODELS}
    try:
        pool = tmp_path / "pool.yaml"
        agree = {"name": "agree", "models": ["math-7b", "hist-7b"], "then": "big-70b", "grader": "number"}
        pool.write_text(pool_yaml([{"name": n, "base_url": b.url} for n, b in backends.items()], str(router),
                                  policies={"agree": agree}))
        choices, fb = tmp_path / "choices.jsonl", tmp_path / "feedback.jsonl"
        rng = np.random.default_rng(0)
        with start_gateway(pool, "--choice-log", str(choices), "--feedback-log", str(fb), "--log-prompts",
                           "--explore", "0.5", "--explore-seed", "3", timeout=90) as gw:
            client = openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0)
            for i in range(60):
                topic = list(TOPICS)[i % 3]
                text = f"{TOPICS[topic][i % 4]} {topic} question {i}"
                raw = client.chat.completions.with_raw_response.create(
                    model="herd", messages=[{"role": "user", "content": text}])
                model = raw.parse().model
                score = float(rng.random() < RATES[topic][MODELS.index(model)])
                got = httpx.post(f"{gw.url}/feedback", json={"request_id": raw.headers["x-herd-request-id"],
                                                            "score": score}, timeout=30)
                assert got.status_code == 200, got.text
            for i in range(3):  # the first stage agrees: math-7b's answer stands because hist-7b gave it too
                raw = client.chat.completions.with_raw_response.create(
                    model="herd:agree", messages=[{"role": "user", "content": f"add {i} and {i}"}])
                assert raw.parse().model == "math-7b"
                got = httpx.post(f"{gw.url}/feedback", json={"request_id": raw.headers["x-herd-request-id"],
                                                            "score": 1.0}, timeout=30)
                assert got.status_code == 200, got.text
    finally:
        for b in backends.values():
            b.stop()
    r = herd("import", "choice-log", str(choices), "--feedback", str(fb), "-o", str(tmp_path / "live"))
    assert r.returncode == 0, r.stderr
    # The agreement cascade's answers were kept for the agreement, not picked with a propensity: skipped.
    assert "kept 60 answered request(s)" in r.stdout and "skipped 3: answered by an agreement cascade" in r.stdout
    logged = {json.loads(line)["request_id"]: json.loads(line) for line in choices.read_text().splitlines()}
    agreed = [c for c in logged.values() if c["route"] == "herd:agree"]
    assert len(agreed) == 3 and all(c["agree"]["agreed"] and c["model"] == c["chosen"] for c in agreed)
    data = Outcomes.load(tmp_path / "live", min_outcomes=1)
    for row in data.outcomes.itertuples():
        assert row.propensity == logged[row.qid]["propensity"] and row.model == logged[row.qid]["model"]
    assert set(data.queries["text"]) == {logged[q]["query"] for q in data.queries["qid"]}
    assert data.outcomes["explored"].any() and (data.outcomes["propensity"] < 1).all()
    r = herd("eval", str(tmp_path / "live"), "--off-policy", "--candidate", str(router), "-o", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "rep" / "offpolicy.json").read_text())
    assert result["requests"] == 60 and result["explored"] == int(data.outcomes["explored"].sum())
