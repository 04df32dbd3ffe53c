import json
import math

import os

import numpy as np
import pandas as pd
import pytest

from herd.data import HerdDataError, Outcomes, find_data_dir
from herd.pricing import DEFAULT_SIZE_PRICES, parse_size_prices, price_for_size


def load(frames, **kw):
    q, o, m = frames
    return Outcomes.from_frames(q, o, m, queries_name="queries.parquet", outcomes_name="outcomes.parquet", **kw)


def test_load_directory_and_pivot(dataset_dir):
    d = Outcomes.load(dataset_dir)
    assert d.groups() == [("toy", "mix")]
    assert d.model_names() == ["big-70b", "hist-7b", "math-7b"]
    m = d.matrix()
    assert m.correct.shape == (90, 3)
    row = m.keys.index[m.keys["qid"] == "math-0"][0]
    assert m.correct[row, m.models.index("math-7b")] == 1.0
    assert m.correct[row, m.models.index("hist-7b")] == 0.0


def test_long_csv_and_jsonl(tmp_path, frames):
    q, o, _ = frames
    long = o.merge(q, on=["source", "benchmark", "qid"])
    long.to_csv(tmp_path / "long.csv", index=False)
    with open(tmp_path / "long.jsonl", "w") as f:
        for rec in long.to_dict("records"):
            f.write(json.dumps(rec) + "\n")
    for name in ("long.csv", "long.jsonl"):
        d = Outcomes.load(tmp_path / name)
        assert len(d.queries) == 90 and len(d.outcomes) == 270


def test_long_file_without_source_or_benchmark(tmp_path, frames):
    q, o, _ = frames
    long = o.merge(q, on=["source", "benchmark", "qid"]).drop(columns=["source", "benchmark"])
    long.to_csv(tmp_path / "mine.csv", index=False)
    assert Outcomes.load(tmp_path / "mine.csv").groups() == [("mine", "all")]


def test_missing_column_names_file_and_fix(frames):
    q, o, m = frames
    with pytest.raises(HerdDataError, match=r"outcomes.parquet: missing column\(s\) \['correct'\]"):
        load((q, o.drop(columns=["correct"]), m))
    with pytest.raises(HerdDataError, match=r"queries.parquet: missing column\(s\) \['text'\]"):
        load((q.drop(columns=["text"]), o, m))


def test_duplicate_outcome_rows(frames):
    q, o, m = frames
    o = pd.concat([o, o.iloc[[5]]], ignore_index=True)
    with pytest.raises(HerdDataError, match=r"1 duplicate \(source, benchmark, qid, model\) row\(s\), first at row 271: .*qid=math-1, model=big-70b"):
        load((q, o, m))


def test_duplicate_queries(frames):
    q, o, m = frames
    with pytest.raises(HerdDataError, match="duplicate \\(source, benchmark, qid\\)"):
        load((pd.concat([q, q.iloc[[0]]]), o, m))


def test_correct_outside_unit_interval(frames):
    q, o, m = frames
    o = o.copy()
    o.loc[7, "correct"] = 1.5
    o.loc[9, "correct"] = -1
    with pytest.raises(HerdDataError, match=r"'correct' has 2 value\(s\) outside \[0, 1\], first at row 8: .*qid=math-2"):
        load((q, o, m))


def test_correct_not_numeric_or_empty(frames):
    q, o, m = frames
    o = o.copy().astype({"correct": object})
    o.loc[3, "correct"] = "yes"
    with pytest.raises(HerdDataError, match="non-numeric"):
        load((q, o, m))
    o.loc[3, "correct"] = None
    with pytest.raises(HerdDataError, match="is empty in 1 row"):
        load((q, o, m))


def test_outcomes_for_unknown_queries(frames):
    q, o, m = frames
    with pytest.raises(HerdDataError, match=r"3 outcome\(s\) for queries not in queries.parquet, first at row 1: .*qid=math-0"):
        load((q[q.qid != "math-0"], o, m))


def test_model_with_too_few_outcomes(frames):
    q, o, m = frames
    o = o[(o.model != "hist-7b") | o.qid.isin(["math-0", "math-1"])]
    with pytest.raises(HerdDataError, match=r"model 'hist-7b' has only 2 outcome\(s\) on toy/mix \(minimum 20\).*--models"):
        load((q, o, m))
    assert len(load((q, o, m), min_outcomes=2).outcomes) == len(o)


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(HerdDataError, match="bad.jsonl: cannot be read as jsonl"):
        Outcomes.load(bad)
    with pytest.raises(HerdDataError, match="no such file"):
        Outcomes.load(tmp_path / "nope")
    with pytest.raises(HerdDataError, match="no outcomes.parquet"):
        Outcomes.load(tmp_path)


def test_filter_and_unknown_names(dataset_dir):
    d = Outcomes.load(dataset_dir)
    assert d.filter(models=["math-7b"]).model_names() == ["math-7b"]
    with pytest.raises(HerdDataError, match=r"no benchmark \['nope'\]; known: \['mix'\]"):
        d.filter(benchmark="nope")
    with pytest.raises(HerdDataError, match="no outcomes for model"):
        d.filter(models=["gpt-9"])


def test_kfold_is_by_query_disjoint_and_complete(dataset_dir):
    d = Outcomes.load(dataset_dir)
    seen = []
    for train, test in d.kfold(5, seed=3):
        tr, te = set(train.queries.qid), set(test.queries.qid)
        assert not tr & te
        assert len(tr) + len(te) == 90
        assert set(test.outcomes.qid) == te and set(train.outcomes.qid) == tr
        seen += sorted(te)
    assert sorted(seen) == sorted(d.queries.qid)
    again = [sorted(te.queries.qid) for _, te in d.kfold(5, seed=3)]
    assert again == [sorted(te.queries.qid) for _, te in d.kfold(5, seed=3)]
    assert again != [sorted(te.queries.qid) for _, te in d.kfold(5, seed=4)]


def test_split_by_query(dataset_dir):
    train, test = Outcomes.load(dataset_dir).split(test_size=0.2, seed=0)
    assert len(test.queries) == 18 and len(train.queries) == 72
    assert not set(train.queries.qid) & set(test.queries.qid)


def test_cost_estimates_are_flagged(frames):
    d = load(frames)
    o = d.outcomes.set_index(["qid", "model"])
    # big-70b: list price 5 in / 15 out per 1M tokens; prompt chars/4 tokens; 400 chars/4 = 100 output tokens.
    text = frames[0].set_index("qid").loc["math-0", "text"]
    expected = (len(text) / 4 * 5.0 + 100 * 15.0) / 1e6
    assert o.loc[("math-0", "big-70b"), "cost_usd"] == pytest.approx(expected)
    assert o.loc[("math-0", "big-70b"), "cost_estimated"]
    # math-7b has no price but 7B open weights: the size schedule's price for both directions.
    p = price_for_size(7.0)
    assert o.loc[("math-0", "math-7b"), "cost_usd"] == pytest.approx((len(text) / 4 + 100) * p / 1e6)
    m = d.matrix()
    assert m.cost_estimated.all()


def test_recorded_cost_is_kept_and_unpriced_model_has_none(frames):
    q, o, m = frames
    o = o.copy()
    o["cost_usd"] = np.where(o.model == "big-70b", 0.01, np.nan)
    m = m.copy()
    m.loc[m.model == "math-7b", "params_b"] = None  # neither price nor size
    d = load((q, o, m))
    mat = d.matrix()
    j = mat.models.index
    assert np.all(mat.cost[:, j("big-70b")] == 0.01) and not mat.cost_estimated[j("big-70b")]
    assert np.isnan(mat.cost[:, j("math-7b")]).all()


def test_size_schedule_parsing():
    s = parse_size_prices("8=0.2, 70=0.9")
    assert s[-1] == (math.inf, 0.9)
    assert price_for_size(7, s) == 0.2 and price_for_size(400, s) == 0.9
    assert price_for_size(405, DEFAULT_SIZE_PRICES) == 3.5
    with pytest.raises(ValueError, match="item 2 'x' is not SIZE=PRICE"):
        parse_size_prices("8=0.2,x")


def test_find_data_dir(tmp_path, monkeypatch, dataset_dir):
    assert find_data_dir(dataset_dir) == dataset_dir
    monkeypatch.setenv("HERD_DATA", str(dataset_dir))
    assert find_data_dir(None) == dataset_dir
    monkeypatch.setenv("HERD_DATA", str(tmp_path / "missing"))
    with pytest.raises(HerdDataError, match="HERD_DATA=.*no such file"):
        find_data_dir(None)
    with pytest.raises(HerdDataError, match="--data .*no such file"):
        find_data_dir(tmp_path / "missing")


def test_find_data_dir_default_relative_to_cwd(tmp_path, monkeypatch, dataset_dir):
    shared = tmp_path / "shared" / "data"
    shared.mkdir(parents=True)
    (shared / "outcomes.parquet").write_bytes(b"")
    work = tmp_path / "project"
    work.mkdir()
    monkeypatch.chdir(work)
    assert find_data_dir(None) == shared.resolve()


def test_no_data_found_says_where_it_looked(tmp_path, monkeypatch):
    import herd.data

    monkeypatch.setattr(herd.data, "_default_data_dirs", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(HerdDataError, match=r"no outcome data found \(looked in .*a, .*b\); pass --data DIR or set HERD_DATA"):
        find_data_dir(None)


def test_save_writes_what_load_reads(tmp_path):
    """Recorded costs, observations and models survive a round trip; estimated costs are not
    written as if recorded, so loading estimates them again."""
    queries = pd.DataFrame({"source": "s", "benchmark": "b", "qid": ["1", "2"], "text": ["one", "two"]})
    outcomes = pd.DataFrame({"source": "s", "benchmark": "b", "qid": ["1", "1", "2", "2"],
                             "model": ["a", "b", "a", "b"], "correct": [1.0, 0.0, 0.5, 1.0],
                             "cost_usd": [0.01, None, 0.02, None], "output_chars": [10, 20, 30, 40]})
    models = pd.DataFrame({"model": ["a", "b"], "source": "s", "price_in_per_mtok": [None, 1.0],
                           "price_out_per_mtok": [None, 2.0]})
    data = Outcomes.from_frames(queries, outcomes, models, min_outcomes=1)
    assert data.outcomes["cost_estimated"].sum() == 2
    out = data.save(tmp_path / "new" / "dir")
    assert sorted(p.name for p in out.iterdir()) == ["models.csv", "outcomes.parquet", "queries.parquet"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~umask}  # others may read, as with open()
    written = pd.read_parquet(out / "outcomes.parquet")
    assert "cost_estimated" not in written and written["cost_usd"].isna().sum() == 2
    again = Outcomes.load(out, min_outcomes=1)
    pd.testing.assert_frame_equal(again.outcomes, data.outcomes)
    pd.testing.assert_frame_equal(again.queries, data.queries)
    assert list(again.models["model"]) == ["a", "b"]


def test_save_replaces_each_table_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails midway leaves the tables already there as they were, and no temporary file."""
    queries = pd.DataFrame({"source": "s", "benchmark": "b", "qid": ["1"], "text": ["one"]})
    first = Outcomes.from_frames(queries, pd.DataFrame({"source": "s", "benchmark": "b", "qid": ["1"],
                                                        "model": ["a"], "correct": [1.0]}), min_outcomes=1)
    first.save(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    second = Outcomes.from_frames(queries, pd.DataFrame({"source": "s", "benchmark": "b", "qid": ["1"],
                                                         "model": ["b"], "correct": [0.0]}), min_outcomes=1)

    def broken(self, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a table")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_parquet", broken)
    with pytest.raises(OSError, match="No space left"):
        second.save(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    second.save(tmp_path)
    assert list(Outcomes.load(tmp_path, min_outcomes=1).outcomes["model"]) == ["b"]
