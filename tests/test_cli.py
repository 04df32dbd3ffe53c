"""The `herd` command end to end, as a real process on small tables."""

import json
import os
import subprocess
import sys

import pytest


def herd(*args, cwd=None, env=None, timeout=300):
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "herd", *args], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout)


def test_eval_writes_report_metrics_and_plots(tmp_path, dataset_dir):
    out = tmp_path / "report"
    r = herd("eval", str(dataset_dir), "--router", "knn-tfidf,logistic", "--folds", "3", "-o", str(out),
             "--json", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stderr
    assert "toy / mix: 90 queries, 3 models, 3-fold CV" in r.stdout
    assert "best single (train): big-70b" in r.stdout
    assert "knn-tfidf (argmax)" in r.stdout and "logistic (argmax)" in r.stdout
    assert "logistic (safe)" in r.stdout and "tuned per fold by inner CV" in r.stdout
    assert "~ cost estimated" in r.stdout
    doc = json.loads((tmp_path / "m.json").read_text())
    assert doc["folds"] == 3 and {r["kind"] for r in doc["results"]} >= {"oracle", "router", "best-single"}
    assert (out / "report.html").exists() and list(out.glob("*.png"))
    assert str((out / "report.html").resolve()) in r.stdout


def test_filters_and_data_from_env(tmp_path, dataset_dir):
    r = herd("eval", "--models", "math-7b,hist-7b", "--router", "knn-tfidf", "--folds", "2", "--no-sweep",
             "-o", str(tmp_path / "o"), env={"HERD_DATA": str(dataset_dir)})
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert {x["method"] for x in doc["results"] if x["kind"] == "single"} == {"math-7b", "hist-7b"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--benchmark", "nope"], "no benchmark ['nope']"),
        (["--models", "gpt-9"], "no outcomes for model(s) ['gpt-9']"),
        (["--router", "magic"], "unknown router 'magic'"),
        (["--size-prices", "8=cheap"], "is not SIZE=PRICE"),
        (["--policy", "greedy"], "unknown policy 'greedy'"),
    ],
)
def test_bad_options_get_one_clear_line(tmp_path, dataset_dir, args, message):
    r = herd("eval", str(dataset_dir), "-o", str(tmp_path / "o"), *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_bad_data_is_reported_not_raised(tmp_path, frames):
    q, o, m = frames
    o = o.copy()
    o.loc[4, "correct"] = 7
    d = tmp_path / "bad"
    d.mkdir()
    q.to_parquet(d / "queries.parquet")
    o.to_csv(d / "outcomes.csv", index=False)
    r = herd("eval", str(d), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "outcomes.csv: column 'correct' has 1 value(s) outside [0, 1], first at row 5" in r.stderr


def test_help_and_routers_list():
    r = herd("--help")
    assert r.returncode == 0 and "eval" in r.stdout and "demo" in r.stdout
    r = herd("routers")
    assert "knn" in r.stdout and "logistic" in r.stdout


def test_cli_starts_without_heavy_imports():
    code = "import sys, herd.cli; print(sorted(m for m in ('pandas', 'sklearn', 'torch') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
