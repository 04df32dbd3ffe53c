"""The pool file: valid files load, and every mistake is reported with its line and field."""

from __future__ import annotations

import pytest

from herd.pool import PoolError, load_pool

GOOD = """\
models:
  - name: llama-3-8b
    base_url: http://127.0.0.1:8081/v1/
    model: meta-llama/Meta-Llama-3-8B-Instruct
    price_in_per_mtok: 0.05
    price_out_per_mtok: 0.08
    context_window: 8192
    tags: [open, on_prem]
  - name: gpt-4o
    base_url: https://api.example.com/v1
    api_key_env: HERD_TEST_KEY
router: ./router
policy: {name: cost-aware, cost_weight: 0.2}
policies:
  best: argmax
"""


def write(tmp_path, text: str):
    p = tmp_path / "pool.yaml"
    p.write_text(text)
    return p


def test_good_pool_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("HERD_TEST_KEY", "sk-secret")
    config, router = load_pool(write(tmp_path, GOOD))
    llama, gpt = config.models
    assert llama.base_url == "http://127.0.0.1:8081/v1"  # trailing slash dropped
    assert llama.backend_model == "meta-llama/Meta-Llama-3-8B-Instruct" and gpt.backend_model == "gpt-4o"
    assert llama.tags == ["open", "on_prem"] and llama.context_window == 8192
    assert llama.cost(1e6, 1e6) == pytest.approx(0.13) and gpt.cost(10, 10) is None
    assert gpt.api_key() == "sk-secret"
    assert router == (tmp_path / "router").resolve()
    assert config.policy == {"name": "cost-aware", "cost_weight": 0.2} and config.policies == {"best": "argmax"}
    assert "sk-secret" not in repr(config)  # the key lives only in the environment


@pytest.mark.parametrize("change, expected", [
    (("price_in_per_mtok: 0.05", "price_in_per_mtok: cheap"), "pool.yaml:5: models[0].price_in_per_mtok: Input should be a valid number"),
    (("price_in_per_mtok: 0.05", "price_in_per_mtok: -1"), "pool.yaml:5: models[0].price_in_per_mtok: Input should be greater than or equal to 0"),
    (("    context_window: 8192", "    context_windw: 8192"), "pool.yaml:7: models[0].context_windw: unknown field"),
    (("base_url: https://api.example.com/v1", "base_url: api.example.com"), "pool.yaml:10: models[1].base_url: must start with http://"),
    (("  - name: gpt-4o\n", "  - name: llama-3-8b\n"), "pool.yaml:9: models[1].name: 'llama-3-8b' appears twice"),
    (("  - name: gpt-4o\n", "  - name: herd\n"), "'herd' is reserved"),
    (("    base_url: https://api.example.com/v1\n", ""), "pool.yaml:9: models[1].base_url: Field required"),
    (("tags: [open, on_prem]", "tags: [open, on_prem"), "pool.yaml:9: not valid YAML"),
])
def test_mistakes_name_line_and_field(tmp_path, monkeypatch, change, expected):
    monkeypatch.setenv("HERD_TEST_KEY", "x")
    with pytest.raises(PoolError) as e:
        load_pool(write(tmp_path, GOOD.replace(*change)))
    assert expected in str(e.value)


def test_missing_key_variable_and_empty_files(tmp_path, monkeypatch):
    monkeypatch.delenv("HERD_TEST_KEY", raising=False)
    with pytest.raises(PoolError, match=r"pool.yaml:11: models\[1\].api_key_env: environment variable HERD_TEST_KEY is not set"):
        load_pool(write(tmp_path, GOOD))
    with pytest.raises(PoolError, match="expected a mapping"):
        load_pool(write(tmp_path, "- just a list\n"))
    with pytest.raises(PoolError, match=r"models: List should have at least 1 item"):
        load_pool(write(tmp_path, "models: []\n"))
    with pytest.raises(PoolError, match="cannot read"):
        load_pool(tmp_path / "absent.yaml")


def test_the_readme_pool_example_is_valid(tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme.split("```yaml\n", 1)[1].split("```", 1)[0]
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    config, router = load_pool(write(tmp_path, example))
    assert len(config.models) == 3 and router.name == "router" and set(config.policies) == {"cheap", "budget"}
