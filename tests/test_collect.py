"""`herd collect` against real backend processes on loopback: recording, resuming after SIGKILL,
failures, config changes; and the tasks and prompts it builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from fake_backend import start_backend

from herd.collect.prompts import Prompts
from herd.collect.recorder import Recorder, RunLocked
from herd.collect.tasks import TaskError, load_task
from herd.data import Outcomes


def write_gsm8k(root, n_test=30, n_train=12):
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("test", n_test), ("train", n_train)):
        rows = [{"question": f"{split} question {i}: what is {i} + 1?", "answer": f"{i} + 1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"}
                for i in range(n)]
        (root / f"gsm8k_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def herd(*args, **kw):
    return subprocess.run([sys.executable, "-m", "herd", *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def pool(tmp_path):
    backends = [start_backend(name="chatty", delay_s=0.02, rate_limit_rate=0.2, seed=5),  # 429s with Retry-After: 0
                start_backend(name="base", delay_s=0.02, fail_rate=0.2, seed=4)]
    path = tmp_path / "pool.yaml"
    path.write_text(f"""models:
  - {{name: chatty, base_url: '{backends[0].url}', price_in_per_mtok: 1, price_out_per_mtok: 2, max_concurrency: 4,
      extra_body: {{chat_template_kwargs: {{enable_thinking: false}}}}, extra_headers: {{x-team: a}},
      extra_query: {{api-version: '2024-10-21'}}}}
  - {{name: base, base_url: '{backends[1].url}', prompt_style: completion, max_concurrency: 4, tags: [open]}}
""")
    yield path, backends
    for b in backends:
        b.stop()


def read_log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "calls.jsonl").read_text().splitlines()]


def test_collect_records_grades_and_feeds_eval(tmp_path, pool):
    path, (chatty, base) = pool
    data = write_gsm8k(tmp_path / "data")
    run = tmp_path / "run"
    r = herd("collect", str(path), "--task", "gsm8k", "--data", str(data), "--limit", "25", "--samples", "2",
             "--shots", "2", "--max-retries", "20", "-o", str(run))
    assert r.returncode == 0, r.stderr
    assert "maj@2" in r.stdout and "next: herd eval" in r.stdout
    o = pd.read_parquet(run / "outcomes.parquet")
    assert len(o) == 50 and set(o["model"]) == {"chatty", "base"} and (o["samples"] == 2).all()
    log = read_log(run)
    assert all(c["ok"] for c in log) and any(c["attempts"] > 1 for c in log if c["model"] == "chatty")  # 429s retried
    # The chat model echoes the question, whose last number is i + 1 = the gold answer... for 'what is i + 1?'
    # the last number is 1, so only question 0 is right: grading really happens.
    assert o[o["model"] == "chatty"].set_index("qid").loc["test-0", "correct"] == 1.0
    assert o[o["model"] == "chatty"]["correct"].sum() == 1
    assert o["agreement"].between(0, 1).all() and (o[o["model"] == "chatty"]["agreement"] == 1.0).all()  # echoes agree
    assert data_observed(run) >= {"agreement", "output_chars"}
    sent = base.stats()["last_body"]
    assert sent["prompt"].count("Question:") == 3 and "train question" in sent["prompt"]  # 2 shots from train
    assert "test question" not in sent["prompt"].rsplit("Question:", 1)[0]
    assert chatty.stats()["last_body"]["temperature"] == 0.7  # several samples: sampled, with a seed each
    # The pool's per-model extras reach the backend from collect as from the gateway.
    seen = chatty.stats()
    assert seen["last_body"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert seen["last_headers"]["x-team"] == "a" and seen["last_query"] == "api-version=2024-10-21"
    m = pd.read_csv(run / "models.csv")
    assert list(m["model"]) == ["chatty", "base"] and m.loc[0, "price_in_per_mtok"] == 1
    data = Outcomes.load(run)
    assert data.matrix().n_queries == 25
    r = herd("eval", str(run), "--router", "logistic", "--no-sweep", "--min-outcomes", "5", "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr


def test_resume_after_kill_9_loses_and_duplicates_nothing(tmp_path, pool):
    path, _ = pool
    data = write_gsm8k(tmp_path / "data", n_test=60)
    run = tmp_path / "run"
    args = [sys.executable, "-m", "herd", "collect", str(path), "--task", "gsm8k", "--data", str(data),
            "--samples", "2", "--shots", "1", "--max-retries", "20", "-o", str(run)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once it has recorded some but not all calls
        if (run / "calls.jsonl").exists() and len((run / "calls.jsonl").read_text().splitlines()) > 40:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = len(read_log(run))
    assert 40 < before < 240
    with open(run / "calls.jsonl", "a") as f:
        f.write('{"model": "chatty", "qid": "test-1", "sam')  # a line torn by the kill
    r = herd("collect", str(path), "--task", "gsm8k", "--data", str(data), "--samples", "2", "--shots", "1",
             "--max-retries", "20", "-o", str(run))
    assert r.returncode == 0, r.stderr
    recorded = sum(c["ok"] for c in read_log(run)[:before])
    assert f"{recorded} already recorded" in " ".join(r.stdout.split())
    answered = [(c["model"], c["qid"], c["sample"]) for c in read_log(run) if c["ok"]]
    assert len(answered) == len(set(answered)) == 60 * 2 * 2
    o = pd.read_parquet(run / "outcomes.parquet")
    assert len(o) == 120 and not o.duplicated(["model", "qid"]).any() and (o["samples"] == 2).all()


def test_failed_calls_are_recorded_not_graded_and_retried_next_run(tmp_path):
    data = write_gsm8k(tmp_path / "data")
    with start_backend(name="down", fail_rate=1.0, status=503) as b:
        path = tmp_path / "pool.yaml"
        path.write_text(f"models:\n  - {{name: down, base_url: '{b.url}'}}\n")
        run = tmp_path / "run"
        r = herd("collect", str(path), "--task", "gsm8k", "--data", str(data), "--limit", "5", "--max-retries", "1",
                 "-o", str(run))
        assert r.returncode == 0, r.stderr
        assert "5 (http 503)" in r.stdout
        log = read_log(run)
        assert len(log) == 5 and all(not c["ok"] and c["error"] == "http 503; http 503" for c in log)
        assert b.stats()["requests"] == 10
        assert pd.read_parquet(run / "outcomes.parquet").empty  # no answer is not a wrong answer
    with start_backend(name="down", port=b.port) as b2:  # the backend is back: the failures are asked again
        r = herd("collect", str(path), "--task", "gsm8k", "--data", str(data), "--limit", "5", "-o", str(run))
        assert r.returncode == 0, r.stderr
        assert len(pd.read_parquet(run / "outcomes.parquet")) == 5 and b2.stats()["requests"] == 5


def test_changed_settings_are_a_new_run_never_mixed(tmp_path, pool):
    path, _ = pool
    data = write_gsm8k(tmp_path / "data")
    run = tmp_path / "run"
    base_args = ["collect", str(path), "--task", "gsm8k", "--data", str(data), "--limit", "4", "-o", str(run)]
    assert herd(*base_args).returncode == 0
    r = herd(*base_args, "--max-tokens", "64")
    assert r.returncode == 0 and "8 recorded answers from other settings are set aside" in r.stderr
    assert "0 already recorded" in r.stdout
    log = read_log(run)
    assert len(log) == 16 and len({c["key"] for c in log[:8]} & {c["key"] for c in log[8:]}) == 0
    assert len(pd.read_parquet(run / "outcomes.parquet")) == 8
    # Settings that change no prompt (examples, for a chat-only pool) ask nothing again.
    chat_only = tmp_path / "chat.yaml"
    chat_only.write_text(path.read_text().split("  - {name: base")[0])
    r = herd("collect", str(chat_only), "--task", "gsm8k", "--data", str(data), "--limit", "4", "--max-tokens", "64",
             "--shots", "1", "-o", str(run))
    assert r.returncode == 0 and "4 already recorded" in " ".join(r.stdout.split())


def test_one_recorder_per_directory(tmp_path):
    rec = Recorder(tmp_path / "run")
    with pytest.raises(RunLocked, match="another `herd collect` is recording here"):
        Recorder(tmp_path / "run")
    rec.close()
    Recorder(tmp_path / "run").close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunLocked, match="cannot record here"):
        Recorder(tmp_path / "file")


def test_tasks_and_their_errors(tmp_path, dataset_dir):
    data = write_gsm8k(tmp_path / "data")
    t = load_task("gsm8k", data_dir=data, limit=3, offset=2)
    assert [i.id for i in t.items] == ["test-2", "test-3", "test-4"] and t.items[0].answer == "3"
    assert t.exemplars[0].solution.endswith("The answer is 1.") and "<<" not in t.exemplars[0].solution
    train = load_task("gsm8k", data_dir=data, split="train", limit=2)
    assert train.items[0].id == "train-0" and train.exemplars[0].id.startswith("test-")
    toy = load_task("toy/mix", data_dir=dataset_dir, grader="exact", limit=10)
    assert len(toy.items) == 10 and toy.items[0].answer == "a" and len(toy.exemplars) == 80
    assert not {e.id for e in toy.exemplars} & {i.id for i in toy.items}
    mine = tmp_path / "mine.jsonl"
    mine.write_text('{"id": "q1", "question": "Capital of France?", "answer": "B", "choices": ["Rome", "Paris"]}\n')
    task = load_task(str(mine), grader="choice")
    assert task.items[0].question.endswith("(A) Rome\n(B) Paris") and task.grader == "choice"
    bad = tmp_path / "bad.jsonl"
    for text, message in [('{"question": "x"}\n', "line 1: needs ['answer']"), ("{oops\n", "line 1: not valid JSON"),
                          ('{"id": 1, "question": "a", "answer": "b"}\n{"id": 1, "question": "c", "answer": "d"}\n',
                           "line 2: id '1' appears twice")]:
        bad.write_text(text)
        with pytest.raises(TaskError) as e:
            load_task(str(bad))
        assert message in str(e.value)
    with pytest.raises(TaskError, match="no questions for nope/x"):
        load_task("nope/x", data_dir=dataset_dir)
    with pytest.raises(TaskError, match="unknown task 'gsm9k'"):
        load_task("gsm9k")
    with pytest.raises(ValueError, match="unknown grader"):
        load_task(str(mine), grader="fuzzy")


def test_prompts_draw_examples_with_a_seed_and_templates_override(tmp_path):
    data = write_gsm8k(tmp_path / "data")
    task = load_task("gsm8k", data_dir=data, limit=2)
    p = Prompts.load(shots=3, seed=1)
    assert p.exemplars(task) == Prompts.load(shots=3, seed=1).exemplars(task) != Prompts.load(shots=3, seed=2).exemplars(task)
    text = p.completion(task, task.items[0], p.exemplars(task))
    assert text.count("Question:") == 4 and text.endswith(f"Question: {task.items[0].question}\nAnswer:")
    chat = p.chat(task, task.items[0])[0]["content"]
    assert task.items[0].question in chat and "The answer is <number>" in chat
    own = tmp_path / "tpl"
    own.mkdir()
    (own / "zcot.txt").write_text("Q: {question}\nReply with {answer_format}.")
    mine = Prompts.load(own)
    assert mine.chat(task, task.items[0])[0]["content"].startswith("Q: ") and mine.fingerprint() != p.fingerprint()
    (own / "zcot.txt").write_text("no field here")
    with pytest.raises(TaskError, match="must contain {question}"):
        Prompts.load(own)


def test_retry_after_is_honoured_and_read_in_both_forms():
    import email.utils

    from herd.backends import _retry_after
    from herd.pool import GatewaySettings
    from herd.retry import RetryPolicy

    retry = RetryPolicy.collection(5, GatewaySettings())
    assert retry.delay(0, 30.0) == 30.0 and retry.delay(0, 1e6) == 120.0 and 0 <= retry.delay(3, None) <= 5.0
    assert _retry_after("7") == 7.0 and _retry_after("soon") is None and _retry_after(None) is None
    later = email.utils.formatdate(time.time() + 60, usegmt=True)
    assert 55 < _retry_after(later) <= 60 and _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_templates_with_stray_braces_and_outcome_golds(tmp_path, dataset_dir):
    own = tmp_path / "tpl"
    own.mkdir()
    (own / "zcot.txt").write_text('{question}\nReply as JSON: {"answer": ...}')
    with pytest.raises(TaskError, match="write other braces as"):
        Prompts.load(own)
    q = pd.read_parquet(dataset_dir / "queries.parquet")
    q["gold"] = "She has 3 + 4 = 7 apples.\n#### 7"
    q.to_parquet(dataset_dir / "queries.parquet")
    task = load_task("toy/mix", data_dir=dataset_dir, grader="number", limit=2)
    assert task.items[0].answer == "7"  # the whole GSM8K solution some sources keep, cut to its number


def data_observed(run) -> set:
    return set(Outcomes.load(run, min_outcomes=5).matrix().observed)


def test_a_collection_runs_from_python_as_from_the_cli(tmp_path, pool):
    """plan_task says what a run will ask before asking; run() asks only the missing calls, writes
    the tables and summarizes each model; a second plan of the same run has nothing left to do."""
    from herd.collect.run import plan_task, run_task
    from herd.pool import PoolError

    path, _ = pool
    data = write_gsm8k(tmp_path / "data")
    run = tmp_path / "run"
    plan = plan_task(path, "gsm8k", run, data_dir=data, limit=6, shots=1, max_retries=20, models=["chatty"])
    assert (plan.mine, plan.recorded, plan.todo_per_model()) == (6, 0, {"chatty": 6})
    seen = []
    collected = plan.run(on_call=lambda name, tally: seen.append(name))
    assert seen == ["chatty"] * 6 and not collected.interrupted
    assert (collected.outcomes, collected.queries) == (6, 6)
    (row,) = collected.summary()
    assert row["model"] == "chatty" and row["questions"] == 6 and row["correct"] == pytest.approx(1 / 6)
    assert row["share_correct"] is None and row["failed"] == 0 and row["cost_usd"] > 0
    again = run_task(path, "gsm8k", run, data_dir=data, limit=6, shots=1, max_retries=20)
    assert again.tallies["chatty"].answered == 0 and again.tallies["base"].answered == 6
    assert {r["model"]: r["questions"] for r in again.summary()} == {"chatty": 6, "base": 6}
    with pytest.raises(PoolError, match=r"--models \['nope'\] not in the pool"):
        plan_task(path, "gsm8k", tmp_path / "other", data_dir=data, models=["nope"])


def test_files_that_are_not_text_are_said_so_or_asked_again(tmp_path):
    """A prompt template that is not text is a task error naming it; a damaged line of a run's
    call log (bytes that are not UTF-8) is skipped like a torn one, so its call is made again."""
    (tmp_path / "tpl").mkdir()
    (tmp_path / "tpl" / "zcot.txt").write_bytes(b"\x89PNG\x00\x01\xff")
    with pytest.raises(TaskError, match="zcot.txt: the prompt template is not a text file"):
        Prompts.load(tmp_path / "tpl")
    rec = Recorder(tmp_path / "run")
    rec.close()
    rec.path.write_bytes(b'{"a": 1}\n\xff\xfe garbage\n{"b": 2}\n')
    assert Recorder._read(rec) == [{"a": 1}, {"b": 2}]

