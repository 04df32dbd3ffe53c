"""The README's Python example runs as written (on the shipped data, where it is), and the serving
doc's figures are what the shipped data gives."""

import re
from pathlib import Path

import pytest

from herd.data import HerdDataError, find_data_dir

README = Path(__file__).resolve().parents[1] / "README.md"
SERVING = README.parent / "docs" / "serving.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_python_example_runs_and_evaluate_is_the_function():
    try:
        data_dir = find_data_dir(None)
    except HerdDataError:
        pytest.skip("no shipped outcome data beside the repository")
    example = next(b for b in python_blocks() if "from herd import" in b)
    example = example.replace('"../shared/data"', repr(str(data_dir)))
    scope: dict = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert callable(scope["evaluate"])
    report = scope["report"]
    assert report.benchmarks and report.benchmarks[0].row("best-single").accuracy > 0.5
    assert scope["decision"].choice.shape == (len(scope["test"].queries),)
    decision = scope["decision"]
    assert decision.names[0] in scope["router"].models_ and len(decision.names) == len(decision.choice)
    assert repr(decision).startswith(f"Decision({len(decision.choice)} queries: ") and len(repr(decision)) < 300
    frame = report.to_frame()
    assert {"method", "kind", "accuracy", "cost_usd"} <= set(frame.columns) and len(frame) == len(report.benchmarks[0].rows)


def test_the_public_names_are_listed_and_resolve():
    import herd

    assert {"Outcomes", "evaluate", "make_router", "make_policy"} <= set(dir(herd))
    assert all(getattr(herd, name) is not None for name in dir(herd))
    assert callable(herd.evaluate)


def test_public_entry_points_say_what_they_take_and_give():
    import herd

    for name in ("evaluate", "make_router", "make_policy", "Outcomes", "Evaluation", "BenchmarkResult", "Decision"):
        assert getattr(herd, name).__doc__, name
    assert "(n_queries, n_models)" in herd.make_router.__doc__
    assert "to_frame" in herd.evaluate.__doc__
    assert "(n_queries, n_models)" in herd.Outcomes.matrix.__doc__
    assert "(n_queries, n_models)" in herd.ArgMax.choose.__doc__


def test_the_serve_examples_policy_saves_what_the_docs_say():
    """The serving doc's example trains a policy that saves money; its stated cross-validated
    figures are recomputed here on the shipped data."""
    from herd import Outcomes, evaluate, make_policy

    try:
        data_dir = find_data_dir(None)
    except HerdDataError:
        pytest.skip("no shipped outcome data beside the repository")
    text = SERVING.read_text()
    command = (r"herd train \.\./shared/data --source zeroeval --benchmark gsm8k \\\n"
               r"  --models (\S+) \\\n  --router logistic --policy (\S+) -o router/")
    train = re.search(command, text)
    assert re.search(command, README.read_text()).groups() == train.groups()  # the README's serve example is this one
    models, policy = train.group(1).split(","), train.group(2)
    claim = re.search(r"it answers\s+([\d.]+)% of GSM8K right against gpt-4o's ([\d.]+)%, at (\d+)% of gpt-4o's cost",
                      text)
    data = Outcomes.load(data_dir).filter(source="zeroeval", benchmark="gsm8k", models=models)
    (b,) = evaluate(data, ["logistic"], policy=[make_policy(policy)], folds=5, seed=0, sweep=False).benchmarks
    routed, best = b.row("router"), b.row("best-single")
    assert f"{100 * routed.accuracy:.2f}" == claim.group(1) and f"{100 * best.accuracy:.2f}" == claim.group(2)
    assert f"{routed.cost_usd / best.cost_usd:.0%}" == claim.group(3) + "%"
    assert routed.cost_usd < 0.5 * best.cost_usd  # it saves money
