"""Routers trained on live feedback: weighted, partial outcomes (one model observed per query),
alone or beside benchmark data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from live_logs import MODELS, RATES, simulate, write_lines

from herd import choicelog
from herd.data import Outcomes
from herd.routers import make_router, weighted_names

WEIGHTED = ["logistic", "knn-tfidf", "cluster-tfidf"]
PROBES = {"math": "add the numbers math question", "history": "which emperor ruled rome history question",
          "code": "write a python function code question"}


def herd(*args):
    return subprocess.run([sys.executable, "-m", "herd", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def live_dir(tmp_path):
    """900 requests of a policy that sends everything to big-70b and explores 30% uniformly."""
    choices, fb, _ = simulate(900, 0.3, lambda topic: 2, seed=1)
    frames, _ = choicelog.join(write_lines(tmp_path / "c.jsonl", choices), write_lines(tmp_path / "f.jsonl", fb))
    return Outcomes(*frames).save(tmp_path / "live")


def live_matrix(live_dir):
    m = Outcomes.load(live_dir, min_outcomes=1).matrix(MODELS)
    return m, choicelog.feedback_weights(m, np.ones(m.n_queries, bool), 1.0)


@pytest.mark.parametrize("name", WEIGHTED)
def test_partial_feedback_teaches_who_is_right_on_what(live_dir, name):
    m, w = live_matrix(live_dir)
    scores = make_router(name).fit(m, sample_weight=w).predict_scores(list(PROBES.values()))
    for i, topic in enumerate(PROBES):
        # Each topic's best model, though the small ones answered only the explored 10% each.
        assert int(np.argmax(scores[i])) == int(np.argmax(RATES[topic])), (topic, scores[i])
    # Unweighted, the missing outcomes would count as wrong: the small models look hopeless.
    plain = make_router(name).fit(m).predict_scores([PROBES["math"]])
    assert plain[0, 0] < 0.2 < scores[0, 0]


@pytest.mark.parametrize("name", WEIGHTED)
def test_unit_weights_fit_as_no_weights(frames, name):
    m = Outcomes.from_frames(*frames).matrix()
    texts = m.texts[:20]
    a = make_router(name, seed=0).fit(m).predict_scores(texts)
    b = make_router(name, seed=0).fit(m, sample_weight=np.ones(m.correct.shape)).predict_scores(texts)
    np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", WEIGHTED)
def test_a_zero_weight_leaves_the_outcome_out(frames, name):
    m = Outcomes.from_frames(*frames).matrix()
    keep = np.arange(m.n_queries) % 3 != 0
    w = np.where(keep[:, None], 1.0, 0.0) * np.ones(m.correct.shape)
    a = make_router(name).fit(m, sample_weight=w)
    np.testing.assert_allclose(a.prior_, make_router(name).fit(m.take(np.flatnonzero(keep))).prior_)
    assert not np.allclose(a.prior_, make_router(name).fit(m).prior_)


def test_routers_that_cannot_weigh_say_which_can(live_dir):
    m, w = live_matrix(live_dir)
    assert set(WEIGHTED) <= set(weighted_names()) and "mf" not in weighted_names()
    for name in ("mf", "auto"):
        with pytest.raises(ValueError, match="cannot weigh.*logistic"):
            make_router(name).fit(m, sample_weight=w)
    with pytest.raises(ValueError, match="missing"):
        make_router("logistic").fit(m, sample_weight=np.ones(m.correct.shape))
    with pytest.raises(ValueError, match="shape"):
        make_router("logistic").fit(m, sample_weight=w[:, :2])


def test_inverse_propensity_weights_by_hand():
    q = pd.DataFrame({"source": "s", "benchmark": "b", "qid": list("abcd"), "text": list("abcd")})
    o = pd.DataFrame({"source": "s", "benchmark": "b", "qid": list("abcd"), "model": ["x", "x", "x", "y"],
                      "correct": [1.0, 0.0, 1.0, 1.0], "propensity": [0.9, 0.9, 0.1, 0.5]})
    m = Outcomes.from_frames(q, o, min_outcomes=1).matrix(["x", "y"])
    w = choicelog.feedback_weights(m, np.array([True, True, True, False]), 2.0)
    # x: inverses 1/0.9, 1/0.9, 10, mean 4.074; weights 2 * inverse / mean. Row d is benchmark data.
    mean = (2 / 0.9 + 10) / 3
    np.testing.assert_allclose(w[:3, 0], 2 * np.array([1 / 0.9, 1 / 0.9, 10]) / mean)
    np.testing.assert_allclose(w[:3, 1], 0)
    np.testing.assert_allclose(w[3], [1, 1])
    assert w[:3, 0].mean() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="more than 0"):
        choicelog.feedback_weights(m, np.ones(4, bool), 0)


def test_train_with_feedback_added(dataset_dir, live_dir, tmp_path):
    r = herd("train", str(dataset_dir), "--add", str(live_dir), "--add-weight", "0.5", "--policy", "argmax",
             "-o", str(tmp_path / "router"))
    assert r.returncode == 0, r.stderr
    assert "learnt from 900 feedback answer(s)" in r.stdout and "on 90 queries x 3 models" in r.stdout
    manifest = json.loads((tmp_path / "router" / "manifest.json").read_text())
    assert manifest["router"]["name"] == "logistic" and manifest["training_data"]["partial_queries"] == 900
    assert manifest["training_data"]["feedback"] == {"origin": str(live_dir), "weight": 0.5}
    r = herd("route", str(tmp_path / "router"), PROBES["history"], "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["model"] == "hist-7b"


@pytest.mark.parametrize("args, message", [
    (["--add", "LIVE", "--router", "mf"], "cannot weigh outcomes"),
    (["--add", "LIVE", "--add-weight", "0"], "more than 0"),
    (["--add-weight", "2"], "weighs the feedback given by --add"),
    (["--add", "DATA"], "not live feedback"),
])
def test_train_add_errors(dataset_dir, live_dir, tmp_path, args, message):
    args = [str(live_dir) if a == "LIVE" else str(dataset_dir) if a == "DATA" else a for a in args]
    r = herd("train", str(dataset_dir), *args, "-o", str(tmp_path / "r"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_live_data_is_not_cross_validated_as_a_full_table(live_dir, tmp_path):
    for cmd in (["train", str(live_dir), "-o", str(tmp_path / "r")], ["eval", str(live_dir)]):
        r = herd(*cmd)
        assert r.returncode == 2 and "--off-policy" in r.stderr and "--add" in r.stderr
