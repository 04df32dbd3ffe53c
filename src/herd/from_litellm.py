"""A pool file from a LiteLLM proxy config (``herd pool from-litellm``): each ``model_list`` entry
whose model speaks OpenAI's API becomes a pool model; everything else is reported, never dropped
in silence.

Mapped: ``model_name`` (the pool name), ``litellm_params.model`` (the backend's model id, its
provider prefix removed), ``api_base``, ``api_key: os.environ/NAME`` (herd's ``api_key_env``),
``input_cost_per_token``/``output_cost_per_token`` (per million tokens in herd), ``timeout``,
``extra_headers``, Azure's ``api_version`` and key header, ``model_info.max_input_tokens``.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from herd.jsonl import read_text
from herd.pool import PoolConfig, PoolError

OPENAI_BASE = "https://api.openai.com/v1"
# Providers whose servers speak OpenAI's chat API at ``api_base`` (LiteLLM's prefixes).
OPENAI_LIKE = {"openai", "hosted_vllm", "vllm", "openai_like", "custom_openai", "lm_studio", "llamafile", "xinference"}
COMPLETION = {"text-completion-openai"}
OLLAMA = {"ollama", "ollama_chat"}
MAPPED_PARAMS = {"model", "api_base", "api_key", "api_version", "input_cost_per_token", "output_cost_per_token",
                 "timeout", "extra_headers"}


def convert(path: str | Path) -> tuple[dict, list[str]]:
    """(pool file as a dict, what could not be mapped, one line each)."""
    p = Path(path)
    text = read_text(p, PoolError, "LiteLLM config")
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PoolError(f"{p}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    entries = raw.get("model_list") if isinstance(raw, dict) else None
    if not isinstance(entries, list) or not entries:
        raise PoolError(f"{p}: no 'model_list' (a list of {{model_name, litellm_params}}) at the top")
    notes = [f"{key}: herd routes by its own router and policies" for key in raw if key != "model_list"]
    models, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"model_list[{i}]"
        name = entry.get("model_name") if isinstance(entry, dict) else None
        params = entry.get("litellm_params") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(params, dict) or not isinstance(params.get("model"), str):
            notes.append(f"{where}: skipped: needs model_name and litellm_params.model")
            continue
        if name in seen:
            notes.append(f"{where} ({name}): skipped: a second deployment of {name} (LiteLLM balances across them; "
                         "a herd pool names each model once)")
            continue
        model, why = _model(name, params, entry.get("model_info") or {}, notes)
        if model is None:
            notes.append(f"{where} ({name}): skipped: {why}")
            continue
        seen.add(name)
        models.append(model)
    if not models:
        raise PoolError(f"{p}: no model could be mapped:\n" + "\n".join(notes))
    pool = {"models": models}
    try:
        PoolConfig.model_validate(pool)
    except ValidationError as e:
        raise PoolError(f"{p}: the mapped pool is not valid: {e.errors()[0]['msg']}") from None
    return pool, notes


def _model(name: str, params: dict, info: dict, notes: list[str]) -> tuple[dict | None, str]:
    provider, _, backend_id = params["model"].partition("/")
    if not backend_id:  # no prefix: LiteLLM takes it for an OpenAI model
        provider, backend_id = "openai", params["model"]
    base = params.get("api_base")
    if base is not None and not isinstance(base, str):
        return None, f"api_base must be a URL, got {base!r}"
    model = {"name": name}
    if provider in OPENAI_LIKE | COMPLETION:
        if not base and provider != "openai":
            return None, f"provider {provider} needs api_base"
        model["base_url"] = (base or OPENAI_BASE).rstrip("/")
        if provider in COMPLETION:
            model["prompt_style"] = "completion"
    elif provider in OLLAMA:
        model["base_url"] = (base or "http://127.0.0.1:11434").rstrip("/") + "/v1"  # Ollama's OpenAI-compatible API
    elif provider == "azure":
        if not base or not params.get("api_version"):
            return None, "an Azure deployment needs api_base and api_version"
        model["base_url"] = f"{base.rstrip('/')}/openai/deployments/{backend_id}"
        model["extra_query"] = {"api-version": str(params["api_version"])}
        model["api_key_header"] = "api-key"
    else:
        return None, f"provider {provider} does not speak OpenAI's API (herd calls OpenAI-compatible servers only)"
    if backend_id != name:
        model["model"] = backend_id
    key = params.get("api_key")
    if isinstance(key, str) and key.startswith("os.environ/"):
        model["api_key_env"] = key.removeprefix("os.environ/")
    elif key is not None:
        notes.append(f"{name}: api_key written in the config is not copied (herd reads keys from the environment): "
                     "put it in a variable and set api_key_env")
    prices = [params.get("input_cost_per_token"), params.get("output_cost_per_token")]
    if all(isinstance(x, (int, float)) for x in prices):
        model["price_in_per_mtok"], model["price_out_per_mtok"] = (round(x * 1e6, 6) for x in prices)
    elif any(x is not None for x in prices):
        notes.append(f"{name}: no price: it needs both input_cost_per_token and output_cost_per_token")
    if isinstance(params.get("timeout"), (int, float)) and params["timeout"] > 0:
        model["timeout_s"] = float(params["timeout"])
    if isinstance(params.get("extra_headers"), dict):
        model["extra_headers"] = {str(k): str(v) for k, v in params["extra_headers"].items()}
    if isinstance(info.get("max_input_tokens"), int):
        model["context_window"] = info["max_input_tokens"]
    unmapped = sorted(set(params) - MAPPED_PARAMS) + sorted(f"model_info.{k}" for k in info if k != "max_input_tokens")
    if unmapped:
        notes.append(f"{name}: {', '.join(unmapped)}")
    return model, ""


def write(pool: dict, notes: list[str], out: str | Path, source: str | Path) -> Path:
    """The pool file, headed by where it came from and what was left out."""
    header = [f"Pool from the LiteLLM config {source} (herd pool from-litellm)."]
    header += ["Not mapped:", *(f"  {n}" for n in notes)] if notes else []
    out = Path(out)
    out.write_text("".join(f"# {line}\n" for line in header) + yaml.safe_dump(pool, sort_keys=False))
    return out
