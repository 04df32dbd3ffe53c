import json
import os
import subprocess
import sys

import numpy as np
import pytest

from herd import artifact
from herd.data import Outcomes
from herd.policies import SafeArgMax
from herd.routers import make_router


@pytest.fixture
def trained(dataset_dir):
    m = Outcomes.load(dataset_dir).matrix()
    return artifact.train("logistic", make_router("logistic"), SafeArgMax(), m, data_origin=str(dataset_dir)), m


def test_save_load_round_trip(tmp_path, trained):
    t, m = trained
    artifact.save(t, tmp_path / "r")
    back = artifact.load(tmp_path / "r", models=m.models + ["extra-model"])
    scores, decision = back.route(m.texts[:5])
    np.testing.assert_array_equal(scores, t.router.predict_scores(m.texts[:5]))
    assert decision.choice.tolist() == t.policy.choose(scores, t.model_costs).tolist()
    man = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert man["router"]["name"] == "logistic" and man["policy"]["name"] == "safe"
    assert man["models"] == m.models and len(man["training_data"]["fingerprint"]) == 16
    assert man["validation"]["best_single"] == "big-70b"
    assert man["validation"]["accuracy"] >= man["validation"]["best_single_accuracy"]


def test_training_says_what_the_policy_does_and_a_cheaper_policy():
    from herd.policies import ArgMax

    # 'dear' is right on 180 of 200 queries, 'cheap' (a tenth of the price) on 178 of them; the
    # scores know who is right, so a cost weight keeps 90% accuracy at about 11% of the cost.
    n = 200
    labels = np.zeros((n, 2))
    labels[:180, 0], labels[:178, 1] = 1, 1
    scores = 0.1 + 0.8 * labels
    costs = np.array([1.0, 0.1])
    always_dear = ArgMax().choose(scores, np.array([0.0, 0.0]) + [0, 1e-9])  # ties to the lower cost: index 0
    assert (always_dear == 0).all()
    c = artifact.cheaper_option(scores, labels, costs, ["dear", "cheap"], always_dear, best=0)
    assert c["spec"].startswith("budget:") and c["within_pt"] == 0.5
    assert c["accuracy"] == pytest.approx(0.9) and c["cost_usd"] <= 0.12 and c["best_single_cost_usd"] == 1.0
    # its spec, calibrated again on the same scores, makes the same choices
    from herd.policies import make_policy

    again = make_policy(c["spec"]).fit(scores, labels, costs, ["dear", "cheap"]).choose(scores, costs)
    assert labels[np.arange(n), again].mean() == pytest.approx(0.9)
    # nothing cheaper within 2 points: no suggestion
    assert artifact.cheaper_option(scores, labels, np.array([1.0, 0.95]), ["dear", "cheap"], always_dear, 0) is None
    assert artifact.cheaper_option(scores, labels, np.array([np.nan, np.nan]), ["dear", "cheap"], always_dear, 0) is None


def test_the_manifest_keeps_each_models_share(trained):
    t, m = trained
    v = t.manifest["validation"]
    assert set(v["shares"]) <= set(m.models) and sum(v["shares"].values()) == pytest.approx(1.0)
    assert list(v["shares"].values()) == sorted(v["shares"].values(), reverse=True)
    assert "TrainedRouter(logistic + safe, 3 models" in repr(t)


def _break(directory, what):
    mf = directory / "manifest.json"
    man = json.loads(mf.read_text())
    if what == "version":
        man["herd_version"] = "9.9.0"
    elif what == "field":
        del man["models"]
    elif what == "state":
        with open(directory / "state.joblib", "ab") as f:
            f.write(b"x")
        return
    mf.write_text(json.dumps(man))


@pytest.mark.parametrize("what, message", [
    ("version", "trained with herd 9.9.0"),
    ("field", r"missing field\(s\) \['models'\]"),
    ("state", "do not match the manifest's state_sha256"),
])
def test_load_says_what_does_not_match(tmp_path, trained, what, message):
    artifact.save(trained[0], tmp_path / "r")
    _break(tmp_path / "r", what)
    with pytest.raises(artifact.ArtifactError, match=message):
        artifact.load(tmp_path / "r")


def test_load_checks_pool_and_directory(tmp_path, trained):
    artifact.save(trained[0], tmp_path / "r")
    with pytest.raises(artifact.ArtifactError, match=r"scores model\(s\) \['math-7b'\], which the pool does not have"):
        artifact.load(tmp_path / "r", models=["big-70b", "hist-7b"])
    with pytest.raises(artifact.ArtifactError, match="no manifest.json"):
        artifact.load(tmp_path)
    (tmp_path / "r" / "manifest.json").write_text("{")
    with pytest.raises(artifact.ArtifactError, match="not valid JSON"):
        artifact.load(tmp_path / "r")


def herd(*args):
    return subprocess.run([sys.executable, "-m", "herd", *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ))


def test_train_and_route_from_the_command_line(tmp_path, dataset_dir):
    r = herd("train", str(dataset_dir), "--router", "knn-tfidf", "--policy", "safe", "-o", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    assert "validation (out-of-fold scores on the training queries (3-fold inner CV))" in r.stdout
    # what the policy does there: safe routes the topic specialists on this table
    plan = next(line for line in r.stdout.splitlines() if line.startswith("what it will do"))
    assert "routes " in plan and "% to big-70b" in plan and "pt vs big-70b" in plan, plan
    r = herd("route", str(tmp_path / "r"), "solve for x in the equation math question number 99")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].strip() in {"math-7b", "big-70b", "hist-7b"} and "P(correct)" in r.stdout
    queries = tmp_path / "q.jsonl"
    queries.write_text('{"id": "a", "text": "which emperor ruled rome history"}\n\n{"question": "add the numbers math"}\n')
    r = herd("route", str(tmp_path / "r"), "--file", str(queries), "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["id"] for x in rows] == ["a", 3]
    assert all(set(x) == {"id", "model", "reason", "scores"} and len(x["scores"]) == 3 for x in rows)


@pytest.mark.parametrize("content, message", [
    ("not json\n", "line 1: not valid JSON"),
    ('{"id": 1}\n', 'line 1: needs a string field "text"'),
    ("", "no queries"),
])
def test_route_bad_query_file(tmp_path, trained, content, message):
    artifact.save(trained[0], tmp_path / "r")
    f = tmp_path / "q.jsonl"
    f.write_text(content)
    r = herd("route", str(tmp_path / "r"), "--file", str(f))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_route_missing_artifact(tmp_path):
    r = herd("route", str(tmp_path), "hello")
    assert r.returncode == 2 and "no manifest.json" in r.stderr


def test_eval_a_trained_router_on_held_out_data(tmp_path, frames):
    q, o, m = frames
    train_q, test_q = q.iloc[::2], q.iloc[1::2]
    for name, part in (("train", train_q), ("test", test_q)):
        d = tmp_path / name
        d.mkdir()
        part.to_parquet(d / "queries.parquet")
        o[o.qid.isin(part.qid)].to_parquet(d / "outcomes.parquet")
        m.to_csv(d / "models.csv", index=False)
    r = herd("train", str(tmp_path / "train"), "--router", "logistic", "--min-outcomes", "5", "-o", str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr
    r = herd("eval", str(tmp_path / "test"), "--router", str(tmp_path / "r"), "--min-outcomes", "5",
             "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "a trained router on held-out data" in r.stdout and "logistic (safe)" in r.stdout
    assert "WARNING" not in r.stdout
    doc = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert {x["kind"] for x in doc["results"]} >= {"router", "best-single", "oracle"}
    # The training data again: flagged as optimistic.
    r = herd("eval", str(tmp_path / "train"), "--router", str(tmp_path / "r"), "--min-outcomes", "5",
             "-o", str(tmp_path / "out2"))
    assert r.returncode == 0 and "WARNING: 45 of these 45 queries were in the router's training data" in r.stdout
    r = herd("eval", str(tmp_path / "test"), "--router", str(tmp_path / "r"), "--models", "big-70b,hist-7b",
             "--min-outcomes", "5", "-o", str(tmp_path / "out3"))
    assert r.returncode == 2 and "no outcomes for the router's model(s) ['math-7b']" in r.stderr
    r = herd("eval", str(tmp_path / "test"), "--router", str(tmp_path / "r"), "--router", "logistic")
    assert r.returncode == 2 and "not both" in r.stderr


def test_a_checked_cascade_keeps_its_answer_scorer_and_the_observations_it_was_tuned_on(tmp_path, frames):
    from herd.policies import CheckedCascade, make_policy

    q, o, models = frames
    o = o.assign(output_chars=np.where(o["correct"] > 0, 200, 900))  # long answers are the wrong ones
    m = Outcomes.from_frames(q, o, models).matrix()
    t = artifact.train("logistic", make_router("logistic"), CheckedCascade(["hist-7b", "big-70b"]), m)
    assert set(t.validation_observed) == {"output_chars"}
    back = artifact.load(artifact.save(t, tmp_path / "r"))
    np.testing.assert_array_equal(back.validation_observed["output_chars"], t.validation_observed["output_chars"])
    refit = back.fit_policy(make_policy("cascade-check:hist-7b,big-70b"))
    assert refit.threshold_ == pytest.approx(back.policy.threshold_)
    scores = back.router.predict_scores(m.texts)
    picked = back.policy.choose(scores, None, m.observed)
    hist = m.models.index("hist-7b")
    # Short answers from the small model stand; long ones go on to the big model.
    assert (picked[m.observed["output_chars"][:, hist] == 200] == hist).all()
