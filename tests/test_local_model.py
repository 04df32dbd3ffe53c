"""A real local LLM (llama.cpp's server with Gemma 3 270M): chat requests, plain and streamed, routed
through herd to it, and `herd collect` asking it in both prompt styles. Needs the [local] extra;
skipped without it. The model is tiny, so only the plumbing is checked, not the answers."""

from __future__ import annotations

import json

import openai
import pytest
from fake_backend import start_backend
from servers import local_model_available, pool_yaml, start_gateway, start_local_model

pytestmark = pytest.mark.skipif(not local_model_available(), reason="needs the [local] extra (llama-cpp-python, Gemma GGUF)")
QUESTION = [{"role": "user", "content": "What is 2 + 3? Answer with a number."}]


@pytest.fixture(scope="module")
def models():
    """The local model and a fake cloud model, as pool entries."""
    proc, url = start_local_model()
    cloud = start_backend(name="cloud-70b")
    yield [{"name": "cloud-70b", "base_url": cloud.url, "price_in_per_mtok": 3, "price_out_per_mtok": 15},
           {"name": "gemma-3-270m", "base_url": url, "tags": ["open", "on_prem"], "context_window": 2048,
            "timeout_s": 120, "price_in_per_mtok": 0, "price_out_per_mtok": 0}]
    cloud.stop()
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def gateway(models, tmp_path_factory):
    pool = tmp_path_factory.mktemp("pool") / "pool.yaml"
    pool.write_text(pool_yaml(models))
    with start_gateway(pool) as gw:
        yield gw


def test_private_requests_reach_the_local_model(gateway):
    c = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=120)
    raw = c.chat.completions.with_raw_response.create(model="herd", messages=QUESTION, max_tokens=16, temperature=0,
                                                      extra_body={"herd": {"private": True}})
    answer = raw.parse()
    assert raw.headers["x-herd-model"] == "gemma-3-270m" and answer.model == "gemma-3-270m"
    assert isinstance(answer.choices[0].message.content, str) and answer.usage.completion_tokens > 0
    assert answer.model_extra["herd"]["ineligible"] == {"cloud-70b": "lacks tag(s) ['on_prem']"}
    assert answer.model_extra["herd"]["cost_usd"] == 0


def test_streamed_from_the_local_model(gateway):
    c = openai.OpenAI(base_url=gateway.url, api_key="unused", max_retries=0, timeout=120)
    chunks = list(c.chat.completions.create(model="gemma-3-270m", messages=QUESTION, max_tokens=16, temperature=0,
                                            stream=True))
    assert chunks[0].model_extra["herd"]["model"] == "gemma-3-270m"
    assert all(ch.model == "gemma-3-270m" for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip() and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_a_checked_cascade_samples_the_local_model_and_reads_its_answers(models, tmp_path):
    """Three sampled answers from the real model, compared as numbers; the cascade's step says
    what they were and whether they stood."""
    import numpy as np

    from test_gateway_cascade import _router_with_agreement

    renamed = {"hist-7b": "gemma-3-270m", "big-70b": "cloud-70b"}
    _router_with_agreement(tmp_path / "router", renamed)
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_yaml(models, router="router", policies={"checked": {
        "name": "cascade-check", "models": ["gemma-3-270m", "cloud-70b"], "samples": 3, "threshold": 0.5}},
        not_served=["math-7b"]))
    with start_gateway(pool) as gw:
        c = openai.OpenAI(base_url=gw.url, api_key="unused", max_retries=0, timeout=300)
        answer = c.chat.completions.create(model="herd:checked", messages=QUESTION, max_tokens=24)
    (step,) = answer.model_extra["herd"]["cascade"]
    assert step["model"] == "gemma-3-270m" and step["samples"] == 3 and len(step["answers"]) == 3
    assert 0 <= step["agreement"] <= 1 and step["output_chars"] > 0 and isinstance(step["accepted"], bool)
    assert answer.model == ("gemma-3-270m" if step["accepted"] else "cloud-70b")
    assert np.isfinite(step["p_right"])


def test_collect_from_the_local_model_in_both_prompt_styles(models, tmp_path):
    """GSM8K questions asked of the real local model, chat (ZCoT) and completion (FCoT), then
    asked again: the second run finds everything recorded. Two questions: each one is 4 calls of
    the real model, and the plumbing is the same for two as for more."""
    import subprocess
    import sys

    import pandas as pd

    from test_collect import write_gsm8k

    url = next(m["base_url"] for m in models if m["name"] == "gemma-3-270m")  # the module's llama.cpp server
    pool = tmp_path / "pool.yaml"
    pool.write_text(pool_yaml([
        {"name": "gemma-chat", "base_url": url, "model": "gemma-3-270m", "timeout_s": 120, "max_concurrency": 1},
        {"name": "gemma-base", "base_url": url, "model": "gemma-3-270m", "prompt_style": "completion",
         "timeout_s": 120, "max_concurrency": 1},
    ]))
    data = write_gsm8k(tmp_path / "data", n_test=2, n_train=6)
    args = [sys.executable, "-m", "herd", "collect", str(pool), "--task", "gsm8k", "--data", str(data),
            "--samples", "2", "--shots", "2", "--max-tokens", "48", "-o", str(tmp_path / "run")]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    o = pd.read_parquet(tmp_path / "run" / "outcomes.parquet")
    assert len(o) == 4 and set(o["model"]) == {"gemma-chat", "gemma-base"} and (o["samples"] == 2).all()
    assert (o["output_tokens"] > 0).all() and (o["latency_s"] > 0).all()
    calls = [json.loads(line) for line in (tmp_path / "run" / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 8 and all(c["ok"] and c["text"] for c in calls)
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "8 already recorded" in " ".join(again.stdout.split())
