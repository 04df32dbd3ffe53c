"""The `herd` command end to end, as a real process on small tables."""

import json
import os
import subprocess
import sys

import pandas as pd
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
    assert doc["embedding_engine"] is None  # neither router reads sentence embeddings


def test_demo_embeds_with_the_static_engine_unless_told_otherwise(monkeypatch):
    from herd import cli

    pytest.importorskip("model2vec")
    # Set through monkeypatch (as unset), so the engine the demo picks is undone for later tests.
    monkeypatch.setenv("HERD_EMBED_ENGINE", "")
    cli._demo_engine()
    assert os.environ["HERD_EMBED_ENGINE"] == "static"
    monkeypatch.setenv("HERD_EMBED_ENGINE", "torch")
    cli._demo_engine()
    assert os.environ["HERD_EMBED_ENGINE"] == "torch"


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
        (["--policy", "cost-aware"], "policy 'cost-aware' needs a number"),
        (["--policy", "sorted:2"], "policy 'sorted:2': the threshold is a probability"),
    ],
)
def test_bad_options_get_one_clear_line(tmp_path, dataset_dir, args, message):
    r = herd("eval", str(dataset_dir), "-o", str(tmp_path / "o"), *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["train", "select"])
def test_one_router_commands_take_router_as_a_list_and_refuse_several(tmp_path, dataset_dir, command):
    extra = ["--k", "2"] if command == "select" else []
    r = herd(command, str(dataset_dir), "--router", "knn-tfidf,logistic", "-o", str(tmp_path / "o"), *extra)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "--router knn-tfidf,logistic: this command takes one router" in r.stderr


def test_select_takes_dash_o(tmp_path, dataset_dir):
    r = herd("select", str(dataset_dir), "--k", "2", "--router", "logistic", "--policy", "argmax", "--folds", "2",
             "-o", str(tmp_path / "sel"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sel" / "select.json").exists() and (tmp_path / "sel" / "report.html").exists()


def test_error_text_prints_as_it_is_without_markup(tmp_path, dataset_dir):
    # Brackets in messages and names ('[embed]', a model called '[big]') are text, not styles.
    r = herd("eval", str(dataset_dir), "--models", "[big]", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "no outcomes for model(s) ['[big]']" in r.stderr
    r = herd("route", str(tmp_path / "no-such-router"), "hello")
    assert r.returncode == 2 and r.stderr.startswith("error: ")
    r = herd("routers")
    assert all(line.split(":")[0] in r.stdout for line in r.stdout.splitlines() if line)


def test_an_eval_over_several_benchmarks_says_what_will_run_first(tmp_path, frames):
    q, o, m = frames
    q2, o2 = q.assign(benchmark="other"), o.assign(benchmark="other")
    d = tmp_path / "two"
    d.mkdir()
    pd.concat([q, q2]).to_parquet(d / "queries.parquet")
    pd.concat([o, o2]).to_parquet(d / "outcomes.parquet")
    m.to_csv(d / "models.csv", index=False)
    r = herd("eval", "--router", "logistic", "--policy", "argmax", "--folds", "2", "--no-sweep",
             "-o", str(tmp_path / "o"), env={"HERD_DATA": str(d)})
    assert r.returncode == 0, r.stderr
    plan = r.stdout.splitlines()[0]
    assert plan == ("will evaluate 2 benchmarks, 180 queries (540 outcomes): 2 folds x 1 router(s) x 1 policy(ies) "
                    "= 4 router fits"), plan
    assert "toy/mix (90 x 3), toy/other (90 x 3)" in r.stdout


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
    helps = {}
    for command in ("eval", "demo", "train", "select", "route", "serve", "collect", "import"):
        r = helps[command] = herd(command, "-h")
        assert r.returncode == 0 and f"herd {command} [OPTIONS]" in r.stdout.splitlines()[0], r.stderr
        # readable metavars, brackets in help text kept
        assert "<str>" not in r.stdout and "<list" not in r.stdout and "<int" not in r.stdout
    r = helps["train"]
    assert "--router NAME " in r.stdout and "--out DIR" in r.stdout and "STRONG[@NEED]" in r.stdout
    r = helps["demo"]
    assert "DATA argument" not in r.stdout and "--data PATH" in r.stdout
    r = herd("routers")
    assert "knn" in r.stdout and "logistic" in r.stdout


def test_cli_starts_without_heavy_imports():
    code = "import sys, herd.cli; print(sorted(m for m in ('pandas', 'sklearn', 'torch') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr


def test_user_errors_are_one_line_and_bugs_keep_their_traceback(tmp_path, dataset_dir, monkeypatch):
    """The CLI reports a HerdError as one line with exit code 2; any other exception, a ValueError
    included, is a bug and reaches the user with its traceback."""
    from typer.testing import CliRunner

    from herd import select
    from herd.cli import app

    def user_error(*args, **kwargs):
        raise select.SelectError("no pool of 2 fits a budget of $0")

    def bug(*args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    args = ["select", str(dataset_dir), "--k", "2", "-o", str(tmp_path / "sel")]
    monkeypatch.setattr(select, "select_pool", user_error)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and r.output.strip() == "error: no pool of 2 fits a budget of $0"
    monkeypatch.setattr(select, "select_pool", bug)
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 1 and type(r.exception) is ValueError and "error:" not in r.output


def test_every_user_error_class_is_a_herd_error():
    from herd.artifact import ArtifactError
    from herd.collect.recorder import RunLocked
    from herd.collect.tasks import TaskError
    from herd.data import HerdDataError
    from herd.errors import HerdError, UsageError
    from herd.features import EmbeddingEngineError, EmbeddingsUnavailable
    from herd.gateway.keys import KeysError
    from herd.gateway.spend import LedgerError
    from herd.import_formats import ImportFileError
    from herd.policies import PolicyError
    from herd.pool import PoolError
    from herd.select import SelectError

    for cls in (HerdDataError, ImportFileError, ArtifactError, PoolError, TaskError, SelectError, UsageError,
                EmbeddingEngineError, KeysError, LedgerError, PolicyError):
        assert issubclass(cls, HerdError) and issubclass(cls, ValueError), cls  # code catching ValueError still does
    assert issubclass(RunLocked, HerdError) and issubclass(EmbeddingsUnavailable, HerdError)


def test_user_errors_of_every_command_print_one_line(tmp_path, dataset_dir):
    unpriced = tmp_path / "pool.yaml"
    unpriced.write_text("models:\n  - {name: math-7b, base_url: 'http://127.0.0.1:9/v1'}\n")
    binary = tmp_path / "queries.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    log = tmp_path / "choices.jsonl"
    log.write_text('{"not": "a record"}\n')
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - {name: a, key: same-secret}\n  - {name: b, key: same-secret}\n")
    cases = [
        (["eval", str(dataset_dir), "--folds", "1000", "-o", str(tmp_path / "o")], "need 2 <= folds <= number of"),
        (["eval", str(dataset_dir), "--pool", str(unpriced), "-o", str(tmp_path / "o")],
         "no model has both price_in_per_mtok and price_out_per_mtok"),
        (["route", str(tmp_path), "--file", str(binary)], "not a text file"),
        (["spend", "--choice-log", str(log)], "not a choice log record"),
        (["spend", "--state", "memcached://x"], "expected redis://"),
        (["serve", str(unpriced), "--api-keys-file", str(keys)], "repeats another key's secret"),
        (["import", "long", str(log), "--model", "m", "-o", str(tmp_path / "i")], "--model is for lm-eval, not long"),
        # Files that are not text, and a Redis URL its client cannot read, are user errors too.
        (["serve", str(binary)], "pool file is not a text file"),
        (["eval", str(dataset_dir), "--pool", str(binary)], "pool file is not a text file"),
        (["serve", str(unpriced), "--api-keys-file", str(binary)], "API keys file is not a text file"),
        (["spend", "--choice-log", str(binary)], "choice log is not a text file"),
        (["pool", "from-litellm", str(binary), "-o", str(tmp_path / "p.yaml")], "LiteLLM config is not a text file"),
        (["spend", "--state", "redis://[bad"], "state 'redis://[bad'"),
        (["spend", "--state", "redis://h:notaport/0"], "state 'redis://h:notaport/0'"),
    ]
    for args, message in cases:
        r = herd(*args)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("error: "), (args, r.stderr)
