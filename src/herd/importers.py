"""Outcomes recorded elsewhere, turned into herd's unified format: lm-evaluation-harness
``--log_samples`` files, a generic long CSV/JSONL, RouterBench's wide table and RouteLLM's
per-benchmark response CSVs. Each returns (queries, outcomes, models) frames; bad files stop
with the file, the line or column, and what is wrong. ``import_formats`` names them for `herd import`."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from herd.data import HerdDataError, split_long, validate
from herd.errors import ImportFileError
from herd.jsonl import read_jsonl

SOURCE = "imported"
# lm-eval's per-sample metrics that say right (1) or wrong (0), in the order they are preferred.
LM_EVAL_METRICS = ("exact_match", "acc", "acc_norm", "pass@1", "pass_at_1", "em", "correct")
LM_EVAL_TEXT = ("question", "problem", "query", "input", "prompt", "text", "sentence", "goal", "ctx")


def _qid(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _frames(rows: list[dict], where: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """The unified tables from one row per (question, model) with the question's text (and gold),
    checked as `herd eval` checks a file: a conflict (two outcomes for one question and model,
    two texts for one question) stops with the loader's message. Identical repeated rows count once."""
    if not rows:
        raise ImportFileError(f"{where}: no outcomes to import (no rows, or no scores in them)")
    long = pd.DataFrame(rows).drop_duplicates()
    try:
        queries, outcomes = split_long(long, where)
        validate(queries, outcomes, where, where, min_outcomes=1)
    except HerdDataError as e:
        raise ImportFileError(str(e)) from None
    models = outcomes[["model", "source"]].drop_duplicates().reset_index(drop=True)
    return queries.reset_index(drop=True), outcomes.reset_index(drop=True), models


def lm_eval(paths: list[Path], model: str | None = None, filter_name: str | None = None):
    """``samples_<task>_<date>.jsonl`` files; the model is ``model`` or the folder name lm-eval
    wrote them under; with several answer filters per sample, ``filter_name`` or the first."""
    rows = []
    for path in paths:
        m = re.match(r"samples_(.+?)(?:_\d{4}-\d{2}-\d{2}T[\d\-.:]+)?\.jsonl$", path.name)
        if not m:
            raise ImportFileError(f"{path}: not an lm-eval samples file (expected samples_<task>_<date>.jsonl)")
        task, who = m.group(1), model or path.parent.name
        chosen = filter_name
        for n, s in read_jsonl(path, ImportFileError):
            if not isinstance(s, dict) or "doc_id" not in s:
                raise ImportFileError(f"{path}, line {n}: no doc_id; is this an lm-eval --log_samples file?")
            flt = s.get("filter")
            chosen = chosen or flt
            if flt is not None and flt != chosen:
                continue
            metric = next((k for k in LM_EVAL_METRICS if isinstance(s.get(k), (int, float))), None)  # bools too
            if metric is None:
                raise ImportFileError(f"{path}, line {n}: no per-sample right/wrong metric; looked for {list(LM_EVAL_METRICS)}")
            value = float(s[metric])
            if not 0 <= value <= 1:
                raise ImportFileError(f"{path}, line {n}: {metric}={value} is not in [0, 1]")
            doc = s.get("doc") if isinstance(s.get("doc"), dict) else {}
            text = next((str(doc[k]) for k in LM_EVAL_TEXT if isinstance(doc.get(k), str) and doc[k].strip()), None)
            text = text or _lm_eval_prompt(s) or str(s["doc_id"])
            qid = str(s["doc_id"])
            resp = s.get("resps")
            first = resp[0][0] if isinstance(resp, list) and resp and isinstance(resp[0], list) and resp[0] else None
            rows.append({"source": SOURCE, "benchmark": task, "qid": qid, "model": who, "correct": value,
                         "output_chars": len(first) if isinstance(first, str) else None, "text": text,
                         "gold": None if s.get("target") is None else str(s["target"])})
    return _frames(rows, ", ".join(map(str, paths)))


def _lm_eval_prompt(sample: dict) -> str | None:
    args = sample.get("arguments")
    if isinstance(args, dict):  # {"gen_args_0": {"arg_0": prompt, ...}}
        first = next(iter(args.values()), {})
        return first.get("arg_0") if isinstance(first, dict) else None
    if isinstance(args, list) and args and isinstance(args[0], list) and args[0]:
        return args[0][0] if isinstance(args[0][0], str) else None
    return None


def long_table(path: Path, benchmark: str | None = None):
    """One row per (question, model): ``qid, model, correct`` and optionally ``source``,
    ``benchmark``, ``text``, ``gold``, ``cost_usd``, ``latency_s``, ``output_tokens``."""
    try:
        df = pd.read_json(path, lines=True) if path.suffix == ".jsonl" else pd.read_csv(path)
    except (ValueError, pd.errors.ParserError) as e:
        raise ImportFileError(f"{path}: cannot be read as {'JSONL' if path.suffix == '.jsonl' else 'CSV'} ({e})") from None
    missing = [c for c in ("qid", "model", "correct") if c not in df.columns]
    if missing:
        raise ImportFileError(f"{path}: missing column(s) {missing}; it has {list(df.columns)}")
    df["source"] = df["source"] if "source" in df else SOURCE
    df["benchmark"] = df["benchmark"] if "benchmark" in df else (benchmark or path.stem.lower())
    df["qid"] = df["qid"].astype(str)
    correct = pd.to_numeric(df["correct"].replace({True: 1.0, False: 0.0, "True": 1.0, "False": 0.0}), errors="coerce")
    bad = correct.isna() | (correct < 0) | (correct > 1)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise ImportFileError(f"{path}, row {i + 2}: correct={df['correct'].iloc[i]!r} is not a number in [0, 1]")
    df["correct"] = correct
    if "text" not in df:
        raise ImportFileError(f"{path}: no 'text' column: routers learn from the question text; add it")
    df["text"] = df["text"].astype(str)
    if "gold" in df:
        df["gold"] = df["gold"].astype(str)
    keep = [c for c in ("source", "benchmark", "qid", "model", "correct", "cost_usd", "latency_s", "output_tokens",
                        "output_chars", "text", "gold") if c in df]
    return _frames(df[keep].to_dict("records"), str(path))


def routerbench(path: Path, trust_pickle: bool = False):
    """RouterBench's wide table (CSV, parquet, or its released pickle): ``sample_id, prompt,
    eval_name`` and, per model, ``<model>`` (score), ``<model>|total_cost`` and
    ``<model>|model_response``. Reading a pickle runs whatever code it holds, so a pickle is
    read only with ``trust_pickle``."""
    pickled = path.suffix in (".pkl", ".pickle")
    if pickled and not trust_pickle:
        raise ImportFileError(f"{path}: reading a pickle runs any code it holds; pass --trust-pickle only for a file "
                              "from a source you trust (RouterBench's own release), or convert it to CSV or parquet")
    try:
        df = (pd.read_pickle(path) if pickled else pd.read_parquet(path) if path.suffix == ".parquet"
              else pd.read_csv(path))
    except Exception as e:  # pickle, parquet and CSV readers raise many kinds
        raise ImportFileError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(df, pd.DataFrame):
        raise ImportFileError(f"{path}: holds a {type(df).__name__}, not RouterBench's table")
    missing = [c for c in ("sample_id", "prompt", "eval_name") if c not in df.columns]
    if missing:
        raise ImportFileError(f"{path}: missing RouterBench column(s) {missing}; it has {list(df.columns)[:12]}")
    models = [c.split("|")[0] for c in df.columns if c.endswith("|total_cost")]
    absent = [m for m in models if m not in df.columns]
    if not models or absent:
        raise ImportFileError(f"{path}: expected a score column beside each '<model>|total_cost' column; "
                           f"missing {absent or 'all'}")
    for m in models:
        scores = pd.to_numeric(df[m], errors="coerce")
        bad = (df[m].notna() & scores.isna()) | (scores < 0) | (scores > 1)
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise ImportFileError(f"{path}, row {i + 2}: score column {m!r} holds {df[m].iloc[i]!r}, not a number in [0, 1]")
        df[m] = scores
    rows = []
    for r in df.to_dict("records"):
        bench, qid = str(r["eval_name"]), str(r["sample_id"])
        for m in models:
            score = r[m]
            if pd.isna(score):
                continue
            resp = r.get(f"{m}|model_response")
            rows.append({"source": SOURCE, "benchmark": bench, "qid": qid, "model": m, "correct": float(score),
                         "cost_usd": None if pd.isna(r[f"{m}|total_cost"]) else float(r[f"{m}|total_cost"]),
                         "output_chars": _chars(resp), "text": str(r["prompt"])})
    return _frames(rows, str(path))


def _chars(response) -> int | None:
    """Length of a recorded response; CSV readers turn a response like '3' into a number."""
    return None if response is None or pd.isna(response) else len(str(response))


def routellm(paths: list[Path]):
    """RouteLLM's response CSVs (``mmlu_<subject>.csv``, ``gsm8k_responses.csv``): a ``prompt``
    column and one True/False column per model (``<model>_response`` columns hold the text)."""
    rows = []
    for path in paths:
        try:
            df = pd.read_csv(path)
        except (ValueError, pd.errors.ParserError) as e:
            raise ImportFileError(f"{path}: cannot be read as CSV ({e})") from None
        if "prompt" not in df.columns:
            raise ImportFileError(f"{path}: no 'prompt' column; is this a RouteLLM responses CSV?")
        stem = path.stem.removesuffix("_responses")
        bench = "mmlu" if stem.startswith("mmlu_") else stem
        models = [c for c in df.columns if c != "prompt" and not c.endswith("_response")]
        if not models:
            raise ImportFileError(f"{path}: no model columns beside 'prompt'")
        for m in models:
            values = df[m].map({True: 1.0, False: 0.0, "True": 1.0, "False": 0.0})
            if values.isna().any():
                i = int(values.isna().to_numpy().nonzero()[0][0])
                raise ImportFileError(f"{path}, row {i + 2}: column {m!r} holds {df[m].iloc[i]!r}, not True/False")
        for r in df.to_dict("records"):
            qid = _qid(str(r["prompt"]))
            for m in models:
                resp = r.get(f"{m}_response")
                rows.append({"source": SOURCE, "benchmark": bench, "qid": qid, "model": m, "text": str(r["prompt"]),
                             "correct": 1.0 if r[m] in (True, "True") else 0.0, "output_chars": _chars(resp)})
    return _frames(rows, ", ".join(map(str, paths)))
