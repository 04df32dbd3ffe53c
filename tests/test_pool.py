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
    (("    context_window: 8192", "    context_window: 8192\n    extra_body: {since: 2024-01-01}"),
     "pool.yaml:8: models[0].extra_body: must hold JSON values only"),
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


def test_the_pool_examples_of_the_readme_and_the_serving_docs_are_valid(tmp_path, monkeypatch):
    from pathlib import Path

    def first_pool(page: str) -> str:
        return (Path(__file__).parents[1] / page).read_text().split("```yaml\n", 1)[1].split("```", 1)[0]

    monkeypatch.setenv("OPENAI_API_KEY", "x")
    config, router = load_pool(write(tmp_path, first_pool("docs/serving.md")))
    assert len(config.models) == 3 and router.name == "router" and set(config.policies) == {"cheap", "budget"}
    readme, router = load_pool(write(tmp_path, first_pool("README.md")))
    assert {m.name for m in readme.models} == {m.name for m in config.models} and router.name == "router"


LITELLM = """\
model_list:
  - model_name: gpt-4o-2024-08-06
    litellm_params:
      model: openai/gpt-4o-2024-08-06
      api_key: os.environ/OPENAI_API_KEY
      input_cost_per_token: 0.0000025
      output_cost_per_token: 0.00001
  - model_name: llama-3-8b
    litellm_params: {model: hosted_vllm/meta-llama/Meta-Llama-3-8B-Instruct, api_base: "http://127.0.0.1:8081/v1", rpm: 100}
    model_info: {max_input_tokens: 8192}
  - model_name: azure-mini
    litellm_params: {model: azure/mini-deployment, api_base: "https://res.example.com/", api_version: "2024-10-21",
                     api_key: os.environ/AZURE_API_KEY}
  - model_name: claude
    litellm_params: {model: anthropic/claude-3-5-sonnet-20241022}
  - model_name: llama-3-8b
    litellm_params: {model: hosted_vllm/meta-llama/Meta-Llama-3-8B-Instruct, api_base: "http://127.0.0.1:8082/v1"}
  - model_name: base
    litellm_params: {model: text-completion-openai/base-7b, api_base: "http://127.0.0.1:8083/v1", api_key: sk-literal}
router_settings: {routing_strategy: simple-shuffle}
"""


def test_a_litellm_config_becomes_a_pool_file_and_what_is_left_out_is_said(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from herd.cli import app

    (tmp_path / "config.yaml").write_text(LITELLM)
    r = CliRunner().invoke(app, ["pool", "from-litellm", str(tmp_path / "config.yaml"), "-o", str(tmp_path / "pool.yaml")])
    assert r.exit_code == 0, r.output
    monkeypatch.setenv("OPENAI_API_KEY", "x")
    monkeypatch.setenv("AZURE_API_KEY", "y")
    config, _ = load_pool(tmp_path / "pool.yaml")
    gpt, llama, azure, base = config.models
    assert config.names == ["gpt-4o-2024-08-06", "llama-3-8b", "azure-mini", "base"]
    assert gpt.base_url == "https://api.openai.com/v1" and gpt.api_key_env == "OPENAI_API_KEY"
    assert (gpt.price_in_per_mtok, gpt.price_out_per_mtok) == (2.5, 10.0)
    assert llama.backend_model == "meta-llama/Meta-Llama-3-8B-Instruct" and llama.context_window == 8192
    assert azure.base_url == "https://res.example.com/openai/deployments/mini-deployment"
    assert azure.extra_query == {"api-version": "2024-10-21"} and azure.api_key_header == "api-key"
    assert base.prompt_style == "completion" and base.api_key_env is None
    for words in ("router_settings: herd routes by its own", "llama-3-8b: rpm", "(claude): skipped: provider anthropic",
                  "model_list[4] (llama-3-8b): skipped: a second deployment", "base: api_key written in the config"):
        assert words in r.output and words in (tmp_path / "pool.yaml").read_text()
    assert "sk-literal" not in (tmp_path / "pool.yaml").read_text()
    (tmp_path / "bad.yaml").write_text("model_list: []\n")
    bad = CliRunner().invoke(app, ["pool", "from-litellm", str(tmp_path / "bad.yaml"), "-o", str(tmp_path / "x.yaml")])
    assert bad.exit_code == 2 and "no 'model_list'" in bad.output
    (tmp_path / "odd.yaml").write_text("model_list:\n  - {model_name: a, litellm_params: {model: openai/gpt-4o, api_base: 3}}\n"
                                       "  - {model_name: b, litellm_params: {model: openai/gpt-4o-mini}}\n")
    odd = CliRunner().invoke(app, ["pool", "from-litellm", str(tmp_path / "odd.yaml"), "-o", str(tmp_path / "y.yaml")])
    assert odd.exit_code == 0 and "(a): skipped: api_base must be a URL, got 3" in odd.output
