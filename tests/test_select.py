"""Pool selection: greedy coverage against brute force, constraints, and `herd select`."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from herd.cli import app
from herd.data import Matrix
from herd.select import Constraints, PoolSelector, coverage, pool_cost


def matrix(y: np.ndarray, costs: list[float], owned: list[bool] | None = None) -> Matrix:
    import pandas as pd

    n, k = y.shape
    return Matrix(keys=pd.DataFrame({"source": ["s"] * n, "benchmark": ["b"] * n, "qid": [str(i) for i in range(n)]}),
                  texts=[f"q{i}" for i in range(n)], models=[f"m{j}" for j in range(k)], correct=y.astype(float),
                  cost=np.tile(np.array(costs, float), (n, 1)), latency=np.full((n, k), np.nan),
                  cost_estimated=np.zeros(k, bool), owned=None if owned is None else np.array(owned))


def test_greedy_is_close_to_brute_force_on_random_pools():
    rng = np.random.default_rng(0)
    for trial in range(20):
        y = (rng.random((60, 8)) < rng.uniform(0.2, 0.8, 8)).astype(float)
        chooser = PoolSelector(matrix(y, list(rng.uniform(0.001, 0.01, 8))), Constraints())
        steps = chooser.greedy(3)
        for k in (1, 2, 3):
            brute = max(coverage(y, list(p)) for p in itertools.combinations(range(8), k))
            assert chooser.exhaustive(k)[1] == pytest.approx(brute)
            assert steps[k - 1].oracle >= (1 - 1 / np.e) * brute - 1e-12  # the submodular guarantee
            assert steps[k - 1].oracle <= brute + 1e-12
            assert [s.gain for s in steps] == sorted([s.gain for s in steps], reverse=True)  # diminishing returns


def test_greedy_picks_complements_not_the_next_best_single():
    # m0 and m1 are right on the same half; m2 is worse alone but right on the other half.
    y = np.array([[1, 1, 0]] * 6 + [[0, 0, 1]] * 4, dtype=float)
    steps = PoolSelector(matrix(y, [0.01, 0.01, 0.001]), Constraints()).greedy(2)
    assert [s.added for s in steps] == ["m0", "m2"] and steps[-1].oracle == 1.0


def test_constraints():
    y = np.array([[1, 0, 0, 1]] * 5 + [[0, 1, 0, 1]] * 3 + [[0, 0, 0, 1]] * 2, dtype=float)
    m = matrix(y, [0.001, 0.001, 0.001, 0.05], owned=[True, True, True, False])
    assert [s.added for s in PoolSelector(m, Constraints()).greedy(3)] == ["m3"]  # it answers all: nothing more to add
    assert pool_cost(y, m.cost, [0, 1]) == pytest.approx(0.001)
    cheap = PoolSelector(m, Constraints(budget=0.0015)).greedy(3)
    assert [s.added for s in cheap] == ["m0", "m1"]  # m3 would cost 0.0108 per query
    first = PoolSelector(m, Constraints(must_include=["m1"])).greedy(2)
    assert [s.added for s in first] == ["m1", "m3"]
    assert all(s.added != "m3" for s in PoolSelector(m, Constraints(only_open=True)).greedy(3))
    y2 = np.array([[1, 0, 0]] * 4 + [[0, 1, 0]] * 3 + [[0, 0, 1]] * 3, dtype=float)
    hosted = PoolSelector(matrix(y2, [0.001] * 3, owned=[True] * 3), Constraints(max_params=16),
                      params={"m0": 8, "m1": 70, "m2": 7}).greedy(3)
    assert [s.added for s in hosted] == ["m0", "m2"]  # m1's 70B does not fit beside m0's 8B
    with pytest.raises(ValueError, match="--must-include \\['m9'\\]"):
        PoolSelector(m, Constraints(must_include=["m9"]))


def test_select_command(tmp_path, dataset_dir):
    r = CliRunner().invoke(app, ["select", str(dataset_dir), "--k", "3", "--folds", "3", "--router", "logistic",
                                 "--out", str(tmp_path / "sel")])
    assert r.exit_code == 0, r.output
    result = json.loads((tmp_path / "sel" / "select.json").read_text())
    assert [s["k"] for s in result["greedy"]] == [1, 2, 3]
    assert result["greedy"][-1]["oracle"] == pytest.approx(result["exhaustive"]["3"]["oracle"])
    assert (tmp_path / "sel" / "pool-size.png").exists() and "greedy oracle" in r.output
    page = (tmp_path / "sel" / "report.html").read_text()
    assert "Greedy pool selection, k = 3" in page and "data:image/png;base64" in page and "best possible" in page
    bad = CliRunner().invoke(app, ["select", str(dataset_dir), "--k", "2", "--tags", "on_prem", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "only knows 'open'" in bad.output


def test_select_writes_a_pool_file_the_gateway_serves(tmp_path, dataset_dir):
    from herd.gateway.selection import Selector
    from herd.pool import load_pool

    (tmp_path / "cfg").mkdir()
    full = tmp_path / "cfg" / "pool.yaml"
    full.write_text("models:\n" + "".join(f"  - name: {n}\n    base_url: http://127.0.0.1:9/v1\n    tags: [open]\n"
                                          for n in ("math-7b", "hist-7b", "big-70b", "spare")))
    r = CliRunner().invoke(app, ["select", str(dataset_dir), "--k", "2", "--folds", "3", "--router", "logistic",
                                 "--out", str(tmp_path / "sel"), "--pool", str(full), "--write-pool", str(tmp_path / "two.yaml")])
    assert r.exit_code == 0, r.output
    chosen = [s["added"] for s in json.loads((tmp_path / "sel" / "select.json").read_text())["greedy"]]
    pool, _ = load_pool(tmp_path / "two.yaml")
    assert pool.names == chosen and "herd select --k 2" in (tmp_path / "two.yaml").read_text()
    # A router trained on every candidate serves this pool: the others are left out on purpose.
    assert sorted(pool.not_served) == sorted({"math-7b", "hist-7b", "big-70b", "spare"} - set(chosen))
    assert Selector.from_config(pool, None).plan  # serveable as it is
    missing = tmp_path / "cfg" / "small.yaml"
    missing.write_text("models:\n  - name: spare\n    base_url: http://127.0.0.1:9/v1\n")
    bad = CliRunner().invoke(app, ["select", str(dataset_dir), "--k", "2", "--folds", "3", "--router", "logistic",
                                   "--out", str(tmp_path / "s2"), "--pool", str(missing), "--write-pool", str(tmp_path / "x.yaml")])
    assert bad.exit_code == 2 and "no entry for model(s)" in bad.output


def test_select_pool_from_python_is_what_the_command_writes(tmp_path, dataset_dir):
    """select.json is Selection.to_dict(), and the console's table and report's table are the same rows."""
    from herd.data import Outcomes
    from herd.select import SelectError, select_pool

    r = CliRunner().invoke(app, ["select", str(dataset_dir), "--k", "2", "--folds", "3", "--router", "logistic",
                                 "--policy", "argmax", "--out", str(tmp_path / "sel")])
    assert r.exit_code == 0, r.output
    selection = select_pool(Outcomes.load(dataset_dir), 2, router="logistic", policy="argmax", folds=3)
    written = json.loads((tmp_path / "sel" / "select.json").read_text())
    assert json.loads(json.dumps(selection.to_dict())) == written
    assert written["constraints"] == {"budget": None, "max_params": None, "must_include": [], "tags": []}
    assert selection.chosen == [s["added"] for s in written["greedy"]] and len(selection.rows()) == 2
    page = (tmp_path / "sel" / "report.html").read_text()
    for row in selection.rows():
        assert "".join(f"<td>{cell}</td>" for cell in row) in page
        assert all(cell in r.output for cell in row)
    assert selection.columns()[5] == "logistic+argmax % (CV)" and all(line in r.output for line in selection.checks())
    with pytest.raises(SelectError, match="no model satisfies the constraints"):
        select_pool(Outcomes.load(dataset_dir), 2, Constraints(budget=0.0), router="logistic", folds=3)
