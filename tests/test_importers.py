"""`herd import` on small files in each tool's real format, and on broken ones."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from herd import importers
from herd.data import Outcomes


def herd(*args):
    return subprocess.run([sys.executable, "-m", "herd", *args], capture_output=True, text=True, timeout=120)


def gsm8k_sample(doc_id: int, flt: str, right: bool) -> dict:
    question = f"Tom has {doc_id} apples and buys 2 more. How many apples does he have?"
    return {"doc_id": doc_id, "doc": {"question": question, "answer": f"{doc_id}+2={doc_id + 2}\n#### {doc_id + 2}"},
            "target": f"{doc_id}+2={doc_id + 2}\n#### {doc_id + 2}",
            "arguments": {"gen_args_0": {"arg_0": f"Question: {question}\nAnswer:", "arg_1": {"until": ["Question:"]}}},
            "resps": [[f"He has {doc_id + 2 if right else 0} apples. #### {doc_id + 2 if right else 0}"]],
            "filtered_resps": [str(doc_id + 2 if right else 0)], "filter": flt, "metrics": ["exact_match"],
            "doc_hash": "x", "prompt_hash": "y", "target_hash": "z", "exact_match": float(right)}


def mmlu_sample(doc_id: int, right: bool) -> dict:
    return {"doc_id": doc_id, "doc": {"question": f"Which is prime? ({doc_id})", "subject": "math",
                                      "choices": ["4", "6", "7", "9"], "answer": 2},
            "target": 2, "arguments": {"gen_args_0": {"arg_0": "Which is prime?\nAnswer:", "arg_1": " A"}},
            "resps": [[["-2.1", "False"]], [["-1.5", "False"]], [["-0.2", "True"]], [["-3.0", "False"]]],
            "filtered_resps": [["-2.1", "False"]], "filter": "none", "metrics": ["acc", "acc_norm"],
            "acc": 1.0 if right else 0.0, "acc_norm": 1.0}


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_lm_eval_samples_from_two_models(tmp_path):
    files = []
    for model, skill in (("llama-8b", 0), ("qwen-7b", 1)):
        rows = [gsm8k_sample(i, flt, (i + skill) % 2 == 0) for i in range(30) for flt in ("strict-match", "flexible-extract")]
        files.append(write_jsonl(tmp_path / "results" / model / "samples_gsm8k_2025-01-02T03-04-05.123.jsonl", rows))
        files.append(write_jsonl(tmp_path / "results" / model / "samples_mmlu_math_2025-01-02T03-04-05.123.jsonl",
                                 [mmlu_sample(i, i % 3 != skill) for i in range(30)]))
    queries, outcomes, models = importers.lm_eval(files)
    assert set(models["model"]) == {"llama-8b", "qwen-7b"} and len(outcomes) == 2 * 30 * 2
    gsm = outcomes[(outcomes["benchmark"] == "gsm8k") & (outcomes["model"] == "llama-8b")]
    assert gsm["correct"].mean() == 0.5  # one filter kept, not both
    assert queries.set_index("qid").loc["0"].iloc[0]["text"].startswith("Tom has 0 apples")
    r = herd("import", "lm-eval", *map(str, files), "-o", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    data = Outcomes.load(tmp_path / "out")
    assert set(data.matrix().models) == {"llama-8b", "qwen-7b"}


def test_lm_eval_filter_and_model_options(tmp_path):
    rows = [gsm8k_sample(0, "strict-match", False), gsm8k_sample(0, "flexible-extract", True)]
    f = write_jsonl(tmp_path / "x" / "samples_gsm8k.jsonl", rows)
    _, outcomes, _ = importers.lm_eval([f], model="mine", filter_name="flexible-extract")
    assert outcomes["model"].tolist() == ["mine"] and outcomes["correct"].tolist() == [1.0]


@pytest.mark.parametrize("name, lines, message", [
    ("results.json", ['{"results": {}}'], "not an lm-eval samples file"),
    ("samples_gsm8k.jsonl", ["{broken"], "line 1: not valid JSON"),
    ("samples_gsm8k.jsonl", ['{"doc": {}}'], "line 1: no doc_id"),
    ("samples_gsm8k.jsonl", ['{"doc_id": 0, "doc": {}, "bleu": 3.2}'], "no per-sample right/wrong metric"),
    ("samples_gsm8k.jsonl", ['{"doc_id": 0, "doc": {}, "acc": 2.0}'], "acc=2.0 is not in [0, 1]"),
])
def test_lm_eval_bad_files(tmp_path, name, lines, message):
    f = tmp_path / name
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(importers.ImportFileError) as e:
        importers.lm_eval([f])
    assert message in str(e.value)


def test_long_table(tmp_path):
    rows = [{"qid": q, "model": m, "correct": int((q + len(m)) % 2), "text": f"question {q}", "cost_usd": 0.001}
            for q in range(25) for m in ("a", "bb")]
    f = tmp_path / "mine.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    queries, outcomes, models = importers.long_table(f)
    assert set(outcomes["benchmark"]) == {"mine"} and len(queries) == 25 and outcomes["cost_usd"].notna().all()
    r = herd("import", "long", str(f), "-o", str(tmp_path / "out"), "--benchmark", "quiz")
    assert r.returncode == 0, r.stderr
    assert set(pd.read_parquet(tmp_path / "out" / "outcomes.parquet")["benchmark"]) == {"quiz"}
    pd.DataFrame([{"qid": 1, "model": "a", "correct": "maybe", "text": "q"}]).to_csv(f, index=False)
    with pytest.raises(importers.ImportFileError, match="row 2: correct='maybe' is not a number"):
        importers.long_table(f)
    pd.DataFrame([{"qid": 1, "model": "a", "correct": 1}]).to_csv(f, index=False)
    with pytest.raises(importers.ImportFileError, match="no 'text' column"):
        importers.long_table(f)


def test_routerbench_wide_table(tmp_path):
    models = ["gpt-4-1106-preview", "mistralai/mixtral-8x7b-chat"]
    rows = []
    for i in range(24):
        row = {"sample_id": f"mmlu-anatomy.val.{i}", "prompt": f"Anatomy question {i}?", "eval_name": "mmlu-anatomy",
               "oracle_model_to_route_to": models[i % 2]}
        for j, m in enumerate(models):
            row[m] = float((i + j) % 2 == 0)
            row[f"{m}|model_response"] = "B"
            row[f"{m}|total_cost"] = 0.01 / (j + 1)
        rows.append(row)
    pkl = tmp_path / "routerbench_0shot.pkl"
    pd.DataFrame(rows).to_pickle(pkl)
    queries, outcomes, pool = importers.routerbench(pkl, trust_pickle=True)
    assert list(pool["model"]) == models and len(outcomes) == 48 and outcomes["cost_usd"].max() == 0.01
    r = herd("import", "routerbench", str(pkl), "-o", str(tmp_path / "out"), "--trust-pickle")
    assert r.returncode == 0, r.stderr
    pd.DataFrame(rows).to_parquet(tmp_path / "routerbench_0shot.parquet")
    assert len(importers.routerbench(tmp_path / "routerbench_0shot.parquet")[1]) == 48
    pd.DataFrame([{"sample_id": 1, "prompt": "x"}]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(importers.ImportFileError, match=r"missing RouterBench column\(s\) \['eval_name'\]"):
        importers.routerbench(tmp_path / "bad.csv")


def test_routellm_response_csvs(tmp_path):
    mmlu = tmp_path / "mmlu_anatomy.csv"
    pd.DataFrame({"prompt": [f"Q{i}\nA. x\nB. y\nAnswer:" for i in range(22)],
                  "mixtral-8x7b-instruct-v0.1": [i % 2 == 0 for i in range(22)],
                  "gpt-4-1106-preview": [True] * 22}).to_csv(mmlu, index=False)
    gsm = tmp_path / "gsm8k_responses.csv"
    pd.DataFrame({"prompt": [f"Word problem {i}" for i in range(22)], "mixtral-8x7b-instruct-v0.1": [True] * 22,
                  "gpt-4-1106-preview": [False] * 22, "mixtral-8x7b-instruct-v0.1_response": ["#### 3"] * 22,
                  "gpt-4-1106-preview_response": ["3"] * 22}).to_csv(gsm, index=False)
    queries, outcomes, pool = importers.routellm([mmlu, gsm])
    assert set(outcomes["benchmark"]) == {"mmlu", "gsm8k"} and len(pool) == 2 and len(outcomes) == 88
    assert outcomes[outcomes["benchmark"] == "gsm8k"]["output_chars"].notna().all()
    r = herd("import", "routellm", str(mmlu), str(gsm), "-o", str(tmp_path / "out"))
    assert r.returncode == 0 and "imported 88 outcomes" in r.stdout, r.stderr
    bad = tmp_path / "mmlu_bad.csv"
    pd.DataFrame({"prompt": ["q"], "m": ["perhaps"]}).to_csv(bad, index=False)
    with pytest.raises(importers.ImportFileError, match="row 2: column 'm' holds 'perhaps'"):
        importers.routellm([bad])


def test_import_command_errors(tmp_path):
    r = herd("import", "csv", str(tmp_path / "x.csv"), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "no such file(s)" in r.stderr
    f = tmp_path / "x.csv"
    f.write_text("a\n1\n")
    r = herd("import", "csv", str(f), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "unknown format 'csv'" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("kind, content, message", [
    ("long", "qid,model,correct,text\n", "no outcomes to import"),
    ("routellm", "prompt,gpt-4\n", "no outcomes to import"),
    ("routerbench", "sample_id,prompt,eval_name,m,m|total_cost\n1,q,e,lots,0.1\n", "score column 'm' holds 'lots'"),
])
def test_empty_and_malformed_files_are_clear_errors(tmp_path, kind, content, message):
    f = tmp_path / ("mmlu_x.csv" if kind == "routellm" else "x.csv")
    f.write_text(content)
    r = herd("import", kind, str(f), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


class _Payload:
    """A pickle whose loading creates a file: what an untrusted pickle could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_is_read_only_when_trusted(tmp_path):
    import pickle

    evil, marker = tmp_path / "evil.pkl", tmp_path / "pwned"
    evil.write_bytes(pickle.dumps(_Payload(marker)))
    r = herd("import", "routerbench", str(evil), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "--trust-pickle" in r.stderr and "Traceback" not in r.stderr
    assert not marker.exists()
    r = herd("import", "routerbench", str(evil), "-o", str(tmp_path / "o"), "--trust-pickle")
    assert r.returncode == 2 and "not RouterBench's table" in r.stderr and "Traceback" not in r.stderr


def test_writing_into_an_unwritable_place_is_one_line(tmp_path):
    f = tmp_path / "x.csv"
    pd.DataFrame([{"qid": 1, "model": "a", "correct": 1, "text": "q"}]).to_csv(f, index=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = herd("import", "long", str(f), "-o", str(blocker / "out"))
    assert r.returncode == 2 and "cannot write the imported tables there" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("rows, message", [
    ([{"qid": 1, "model": "a", "correct": 1, "text": "q"}, {"qid": 1, "model": "a", "correct": 0, "text": "q"}],
     "1 duplicate (source, benchmark, qid, model) row(s), first at row 2"),
    ([{"qid": 1, "model": "a", "correct": 1, "text": "q"}, {"qid": 1, "model": "b", "correct": 1, "text": "other"}],
     "1 question(s) with more than one text"),
])
def test_import_refuses_what_eval_refuses_with_the_same_message(tmp_path, rows, message):
    """The original: conflicting rows kept the last value (1 -> 0) and the last text, silently."""
    from herd.data import HerdDataError

    f = tmp_path / "dup.csv"
    pd.DataFrame(rows).to_csv(f, index=False)
    with pytest.raises(HerdDataError, match=re.escape(message)):
        Outcomes.load(f, min_outcomes=1)
    r = herd("import", "long", str(f), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    same = tmp_path / "same.csv"
    pd.DataFrame([rows[0], rows[0], {**rows[0], "model": "b"}]).to_csv(same, index=False)
    assert len(importers.long_table(same)[1]) == 2  # identical repeated rows count once


def test_lm_eval_import_says_it_has_no_prices_and_eval_takes_them_from_a_pool_file(tmp_path):
    files = [write_jsonl(tmp_path / "results" / m / "samples_gsm8k_2025-01-02T03-04-05.123.jsonl",
                         [gsm8k_sample(i, "strict-match", (i + k) % 3 != 0) for i in range(40)])
             for k, m in enumerate(("llama-8b", "qwen-7b"))]
    r = herd("import", "lm-eval", *map(str, files), "-o", str(tmp_path / "out"))
    assert r.returncode == 0 and "no costs or prices for llama-8b, qwen-7b" in r.stderr and "--pool" in r.stderr
    data = Outcomes.load(tmp_path / "out")
    assert data.outcomes["cost_usd"].isna().all()
    cheap, dear = data.with_prices({"llama-8b": (0.1, 0.2)}), data.with_prices({"llama-8b": (1.0, 2.0)})
    llama = cheap.outcomes["model"] == "llama-8b"
    assert cheap.outcomes.loc[llama, "cost_usd"].notna().all() and cheap.outcomes.loc[llama, "cost_estimated"].all()
    assert cheap.outcomes.loc[~llama, "cost_usd"].isna().all()  # a model the prices do not name stays unpriced
    # Estimates are made again at the new prices, not kept: ten times the price, ten times the cost.
    again = cheap.with_prices({"llama-8b": (1.0, 2.0)})
    assert again.outcomes.loc[llama, "cost_usd"].to_numpy() == pytest.approx(
        10 * cheap.outcomes.loc[llama, "cost_usd"].to_numpy())
    assert again.outcomes["cost_usd"].equals(dear.outcomes["cost_usd"])

    pool = tmp_path / "pool.yaml"
    pool.write_text("models:\n"
                    "  - {name: llama, router_name: llama-8b, base_url: 'http://127.0.0.1:9/v1', price_in_per_mtok: 0.1,"
                    " price_out_per_mtok: 0.2}\n"
                    "  - {name: qwen-7b, base_url: 'http://127.0.0.1:9/v1', price_in_per_mtok: 0.05, price_out_per_mtok: 0.1}\n")
    r = herd("eval", str(tmp_path / "out"), "--pool", str(pool), "--router", "logistic", "--policy", "argmax",
             "--folds", "2", "--no-sweep", "-o", str(tmp_path / "report"))
    assert r.returncode == 0, r.stderr
    assert "prices from" in r.stdout and "llama-8b, qwen-7b" in r.stdout
    rows = json.loads((tmp_path / "report" / "metrics.json").read_text())["results"]
    singles = {x["method"]: x["cost_usd"] for x in rows if x["kind"] == "single"}
    assert all(cost is not None and cost > 0 for cost in singles.values()) and len(singles) == 2


# ---- herd import choice-log: the gateway's choice log joined with its feedback ----------------
def live_log(tmp_path):
    from live_logs import feedback, record, write_lines

    choices = [
        record("r1", "add the numbers 2 and 3", "math-7b", propensity=0.9, cost=0.002),
        record("r2", "who signed the treaty", "hist-7b", propensity=0.05, explored=True, allowed=["math-7b", "hist-7b"]),
        record("r3", "fix the bug", "big-70b", status="502", cost=None),
        # A checked cascade whose first model's answer stood: the model chosen answered, yet after a check.
        record("r4", "fix the loop", "hist-7b", cascade=[{"model": "hist-7b", "accepted": True}]),
        record("r4b", "fix the test", "hist-7b", model="big-70b", cascade=[{"model": "hist-7b", "accepted": False}]),
        # Agreement cascades: math-7b's answer kept because hist-7b agreed; straight to the strong model.
        record("r4c", "add 2 and 2", "math-7b", policy="agree:math-7b,hist-7b>big-70b",
               agree={"asked": ["math-7b", "hist-7b"], "answered": ["math-7b", "hist-7b"], "agreed": True}),
        record("r4d", "add 3 and 3", "big-70b", agree={"asked": [], "answered": [], "agreed": False}),
        record("r5", "compute the integral", "math-7b", model="big-70b"),  # a fallback answered
        record("r6", None, "math-7b"),  # prompt logging was off
        record("r7", "when did the war end", "hist-7b"),  # no feedback
        '{"request_id": "r8", "chosen": ',  # cut short by a crash
        record("r9", "return the list", "big-70b", propensity=1.5),
        record("r1", "add the numbers 2 and 3", "math-7b"),  # the same request logged again
    ]
    fb = [feedback("r1", 1.0), feedback("r2", 0.25, "meh"), feedback("r3", 1.0), feedback("r4", 0.0),
          feedback("r4b", 1.0), feedback("r4c", 1.0), feedback("r4d", 1.0), feedback("r5", 1.0), feedback("r6", 1.0), feedback("r1", 0.0), feedback("zz", 1.0),
          {"request_id": "r2", "score": 3}, "not json"]
    return write_lines(tmp_path / "choices.jsonl", choices), write_lines(tmp_path / "feedback.jsonl", fb)


def test_choice_log_round_trip(tmp_path):
    from herd import choicelog

    log, fb = live_log(tmp_path)
    frames, report = choicelog.join(log, fb)
    assert report.kept == 2 and report.explored == 1
    assert dict(report.skipped) == {"status": 1, "cascade": 2, "agree": 2, "fallback": 1, "no_query": 1,
                                    "no_feedback": 1, "duplicate": 1}
    assert report.feedback_duplicates == 1 and report.feedback_unmatched == 1
    assert [m.split(":")[0] for m in report.malformed] == [f"{fb}, line 12", f"{fb}, line 13",
                                                           f"{log}, line 11", f"{log}, line 12"]
    Outcomes(*frames).save(tmp_path / "live")
    data = Outcomes.load(tmp_path / "live", min_outcomes=1)
    o = data.outcomes.set_index("qid")
    assert list(data.queries["text"]) == ["add the numbers 2 and 3", "who signed the treaty"]
    assert set(data.queries["source"]) == {"live"} and set(data.queries["benchmark"]) == {"feedback"}
    assert o.loc["r1", "model"] == "math-7b" and o.loc["r1", "correct"] == 1.0 and o.loc["r1", "propensity"] == 0.9
    assert o.loc["r1", "cost_usd"] == 0.002 and o.loc["r1", "latency_s"] == 0.0125
    assert o.loc["r2", "correct"] == 0.25 and o.loc["r2", "propensity"] == 0.05 and bool(o.loc["r2", "explored"])
    assert json.loads(o.loc["r2", "allowed"]) == ["math-7b", "hist-7b"] and o.loc["r2", "logging_policy"] == "argmax"
    m = data.matrix()
    assert m.propensity[m.keys["qid"].tolist().index("r2"), m.models.index("hist-7b")] == 0.05
    assert np.isnan(m.correct[m.keys["qid"].tolist().index("r2"), m.models.index("math-7b")])


def test_choice_log_cli_says_what_it_skipped(tmp_path):
    log, fb = live_log(tmp_path)
    r = herd("import", "choice-log", str(log), "--feedback", str(fb), "-o", str(tmp_path / "out"),
             "--source", "prod", "--benchmark", "support")
    assert r.returncode == 0, r.stderr
    assert "kept 2 answered request(s)" in r.stdout and "--log-prompts" in r.stdout
    assert f"{log}, line 11: not valid JSON" in r.stdout and "1 repeated feedback line" in r.stdout
    assert "fallback model" in r.stdout and "status other than 200" in r.stdout
    assert "skipped 2: answered by a checked cascade" in r.stdout and "skipped 2: answered by an agreement" in r.stdout
    assert set(pd.read_parquet(tmp_path / "out" / "queries.parquet")["benchmark"]) == {"support"}
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary file left


def test_choice_log_bad_input_is_one_line(tmp_path):
    from live_logs import feedback, record, write_lines

    log = write_lines(tmp_path / "c.jsonl", [record("a", "q", "math-7b")])
    fb = write_lines(tmp_path / "f.jsonl", [feedback("other", 1.0)])
    r = herd("import", "choice-log", str(log), "--feedback", str(fb), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "no answered request has feedback" in r.stderr and "Traceback" not in r.stderr
    r = herd("import", "choice-log", str(log), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "--feedback FILE" in r.stderr
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    r = herd("import", "choice-log", str(tmp_path / "bin.jsonl"), "--feedback", str(fb), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "not a text file" in r.stderr and "Traceback" not in r.stderr
    r = herd("import", "long", str(log), "--feedback", str(fb), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "for choice-log" in r.stderr


def test_propensity_outside_its_range_is_refused(tmp_path):
    from herd.data import HerdDataError

    q = pd.DataFrame({"source": ["s"], "benchmark": ["b"], "qid": ["1"], "text": ["t"]})
    o = pd.DataFrame({"source": ["s"], "benchmark": ["b"], "qid": ["1"], "model": ["m"], "correct": [1.0],
                      "propensity": [0.0]})
    with pytest.raises(HerdDataError, match="propensity.*outside \\(0, 1\\]"):
        Outcomes.from_frames(q, o, min_outcomes=1)


def test_the_registry_is_what_herd_import_reads(tmp_path, monkeypatch):
    """A format added to the registry is listed and imported by `herd import`, with no other change;
    a format's file count and options are checked from its entry."""
    from typer.testing import CliRunner

    from herd import import_formats
    from herd.cli import app

    f = tmp_path / "x.csv"
    pd.DataFrame([{"qid": i, "model": m, "correct": (i + k) % 2, "text": f"q{i}"} for i in range(3)
                  for k, m in enumerate("ab")]).to_csv(f, index=False)

    def toy(files, tag=None):
        queries, outcomes, models = importers.long_table(files[0], benchmark=tag)
        return (queries, outcomes, models), [f"toy read {len(files)} file(s)"]

    monkeypatch.setitem(import_formats.FORMATS, "toy", import_formats.Format("a toy format", toy, options=("tag",)))
    frames, lines = import_formats.read("toy", [f], tag="mine", model=None, trust_pickle=False)
    assert lines == ["toy read 1 file(s)"] and set(frames[1]["benchmark"]) == {"mine"}
    r = CliRunner().invoke(app, ["import", "toy", str(f), "-o", str(tmp_path / "out")])
    assert r.exit_code == 0 and "toy read 1 file(s)" in r.output and "imported 6 outcomes" in r.output, r.output
    assert len(Outcomes.load(tmp_path / "out", min_outcomes=1).outcomes) == 6
    with pytest.raises(importers.ImportFileError, match="long takes one file"):
        import_formats.read("long", [f, f])
    with pytest.raises(importers.ImportFileError, match=r"--model is for lm-eval, not long; --trust-pickle is for "
                                                        r"routerbench, not long"):
        import_formats.read("long", [f], model="m", trust_pickle=True)
    with pytest.raises(importers.ImportFileError, match="--feedback FILE"):
        import_formats.read("choice-log", [f])
    with pytest.raises(importers.ImportFileError, match=r"unknown format 'csv'; choose from \['choice-log', "):
        import_formats.read("csv", [f])
    r = herd("import", "--help")
    assert all(name in r.stdout for name in ("lm-eval", "long", "routerbench", "routellm", "choice-log"))
