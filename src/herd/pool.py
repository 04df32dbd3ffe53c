"""The pool file: which models herd may call, where, at what price, and how to route among them.

One YAML file serves ``herd serve`` (and any command that calls models). Errors name the file,
the line and the field, e.g. ``pool.yaml:7: models[1].price_in_per_mtok: Input should be a
valid number``. API keys never live in the file: a model names the environment variable that
holds its key.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from herd.errors import HerdError
from herd.jsonl import read_text


class PoolError(HerdError, ValueError):
    """A pool file that cannot be used; the message names the file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: str = Field(min_length=1, description="name used by the router and the outcome data")
    router_name: Optional[str] = Field(None, min_length=1, description="the router's name for this model, when the "
                                       "pool names it otherwise (e.g. gpt-4o for gpt-4o-2024-08-06)")
    base_url: str = Field(description="OpenAI-compatible API root, e.g. http://127.0.0.1:8081/v1")
    model: Optional[str] = Field(None, description="model id at the backend; default: name")
    api_key_env: Optional[str] = Field(None, description="environment variable holding the API key")
    price_in_per_mtok: Optional[float] = Field(None, ge=0)
    price_out_per_mtok: Optional[float] = Field(None, ge=0)
    context_window: Optional[int] = Field(None, gt=0, description="tokens, prompt plus completion")
    tags: list[str] = Field(default_factory=list)
    timeout_s: float = Field(60.0, gt=0, description="read timeout per call")
    connect_timeout_s: float = Field(5.0, gt=0)
    max_concurrency: int = Field(64, gt=0, description="calls in flight to this backend at most")
    retries: int = Field(2, ge=0, description="retries on connect errors, 429 and 5xx before falling back")
    prompt_style: Literal["chat", "completion"] = "chat"
    api_key_header: Optional[str] = Field(None, description="header that carries the key as it is (e.g. Azure's "
                                          "api-key); default: Authorization: Bearer KEY")
    extra_headers: dict[str, str] = Field(default_factory=dict, description="sent with every call")
    extra_query: dict[str, str] = Field(default_factory=dict, description="added to every call's URL, e.g. "
                                        "{api-version: 2024-10-21} for Azure")
    extra_body: dict = Field(default_factory=dict, description="default body fields, e.g. vLLM's "
                             "chat_template_kwargs; a request's own fields win")
    stream_usage: bool = Field(True, description="ask streams for their token usage (stream_options.include_usage), "
                               "so their cost is counted, not estimated; false for a server that refuses the field")

    @field_validator("base_url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https://, got {v!r}")
        return v.rstrip("/")

    @field_validator("extra_body")
    @classmethod
    def _json(cls, v: dict) -> dict:
        try:  # sent with every call: a value JSON cannot carry (a YAML date, bytes) fails here, not there
            json.dumps(v, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise ValueError(f"must hold JSON values only (strings, numbers, booleans, null, lists, objects): {e}") from None
        return v

    @property
    def backend_model(self) -> str:
        return self.model or self.name

    def api_key(self) -> Optional[str]:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def cost(self, prompt_tokens: float, completion_tokens: float) -> Optional[float]:
        """USD for one call, or None when a price is unknown."""
        if self.price_in_per_mtok is None or self.price_out_per_mtok is None:
            return None
        return (prompt_tokens * self.price_in_per_mtok + completion_tokens * self.price_out_per_mtok) / 1e6


PolicySpec = Union[str, dict]


class GatewaySettings(_Strict):
    circuit_failures: int = Field(5, gt=0, description="consecutive failures that open a backend's circuit")
    circuit_cooldown_s: float = Field(30.0, gt=0, description="how long an open circuit rests before one trial call")
    backoff_s: float = Field(0.2, ge=0, description="base of the jittered exponential backoff between retries")
    max_backoff_s: float = Field(5.0, ge=0)
    max_body_mb: float = Field(8.0, gt=0, description="larger request bodies get 413")
    default_output_tokens: int = Field(256, gt=0, description="completion length assumed for cost estimates without max_tokens")
    max_header_kb: float = Field(64.0, gt=0, description="a larger request head (request line and headers) gets 431")
    header_timeout_s: float = Field(10.0, gt=0, description="time to send the request head, from connecting or "
                                    "from the previous answer; then 408 and the connection is closed")
    body_timeout_s: float = Field(30.0, gt=0, description="time to send the body once the head is in; then the "
                                  "connection is closed")
    max_connections: int = Field(1000, gt=0, description="open connections per worker; more are answered 503 and closed")
    slot_wait_s: float = Field(2.0, ge=0, description="wait for a slot at a backend's max_concurrency, then fall back")
    metrics_need_key: bool = Field(False, description="/metrics requires a client API key (when keys are set)")
    session_secret: Optional[str] = Field(None, min_length=16, description="key of the choice log's session hashes "
                                          "(HERD_SESSION_SECRET wins; default: random per start)")
    log_session_text: bool = Field(False, description="choice log: also write each session in clear (never for "
                                   "private requests)")
    feedback_window_days: float = Field(7.0, gt=0, description="how long an answered request can get feedback "
                                        "(POST /v1/feedback; herd serve --feedback-log)")
    log_prompts: bool = Field(False, description="choice log: also write the text the router scored as 'query' "
                              "(never for private requests); as herd serve --log-prompts")
    state: Optional[str] = Field(None, pattern=r"^(redis|rediss|unix)://", description="where keys' limits, the "
                                 "spend ledger and backend health are shared, e.g. redis://127.0.0.1:6379/0 "
                                 "(HERD_STATE_URL wins; default: each process's memory)")
    state_fail: Literal["open", "closed"] = Field("open", description="while the state store is unreachable: serve "
                                                  "with each process's own limits (open) or refuse limited requests "
                                                  "with 503 (closed)")


class PoolConfig(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    router: Optional[str] = Field(None, description="directory written by `herd train`; relative to the pool file")
    policy: Optional[PolicySpec] = Field(None, description="default policy; default: the one trained into the router")
    policies: dict[str, PolicySpec] = Field(default_factory=dict, description="named policies, called as model 'herd:NAME'")
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    not_served: list[str] = Field(default_factory=list, description="models the router scores that this pool leaves "
                                  "out on purpose")

    @model_validator(mode="after")
    def _unique(self) -> PoolConfig:
        seen, known = set(), set()
        for i, m in enumerate(self.models):
            if m.name in seen:
                raise ValueError(f"models[{i}].name: {m.name!r} appears twice")
            if m.name == "herd" or m.name.startswith("herd:"):
                raise ValueError(f"models[{i}].name: {m.name!r} is reserved for routing")
            if (m.router_name or m.name) in known:
                raise ValueError(f"models[{i}].router_name: two pool models stand for the router's "
                                 f"{m.router_name or m.name!r}")
            seen.add(m.name)
            known.add(m.router_name or m.name)
        return self

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def by_router_name(self) -> dict[str, str]:
        """Pool name of each model by the name the router knows it by."""
        return {m.router_name or m.name: m.name for m in self.models}


def load_pool(path: str | Path) -> tuple[PoolConfig, Path]:
    """Read and validate a pool file. Returns the config and the router directory resolved
    against the file's folder (or None)."""
    p = Path(path)
    text = read_text(p, PoolError, "pool file")
    try:
        root = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark else str(p)
        raise PoolError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    if not isinstance(raw, dict):
        raise PoolError(f"{p}: expected a mapping with a 'models' list at the top, got {type(raw).__name__}")
    try:
        config = PoolConfig.model_validate(raw)
    except ValidationError as e:
        raise PoolError("\n".join(_describe(p, root, err) for err in e.errors())) from None
    for i, m in enumerate(config.models):
        if m.api_key_env and m.api_key_env not in os.environ:
            line = _line(root, ("models", i, "api_key_env"))
            raise PoolError(f"{p}:{line}: models[{i}].api_key_env: environment variable {m.api_key_env} is not set")
    router = (p.parent / config.router).resolve() if config.router else None
    return config, router


def write_subset(src: str | Path, names: list[str], dst: str | Path, note: str = "") -> Path:
    """A copy of the pool file ``src`` with only the models ``names``, written to ``dst`` (the
    router directory made absolute, so the copy can live anywhere). The result is checked."""
    load_pool(src)
    raw = yaml.safe_load(Path(src).read_text())
    by_name = {m["name"]: m for m in raw["models"]}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise PoolError(f"{src}: no entry for model(s) {missing}; the pool file must name every model it may keep")
    raw["models"] = [by_name[n] for n in names]
    # The router may score the models left behind: leaving them out is now a choice the file states.
    dropped = [by_name[n].get("router_name", n) for n in by_name if n not in names]
    if dropped:
        raw["not_served"] = [*raw.get("not_served", []), *dropped]
    if raw.get("router"):
        raw["router"] = str((Path(src).parent / raw["router"]).resolve())
    out = Path(dst)
    header = "".join(f"# {line}\n" for line in note.splitlines())
    out.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    load_pool(out)
    return out


def _describe(path: Path, root, err: dict) -> str:
    loc = tuple(err["loc"]) or _path_in(err["msg"])
    field = "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc).lstrip(".") or "(top level)"
    message = err["msg"].removeprefix("Value error, ").removeprefix(f"{field}: ")
    if err["type"] == "extra_forbidden":
        message = "unknown field (check its spelling)"
    got = "" if err["type"] in ("missing", "extra_forbidden") or isinstance(err.get("input"), (dict, list)) else f" (got {err.get('input')!r})"
    return f"{path}:{_line(root, loc)}: {field}: {message}{got}"


def _path_in(message: str) -> tuple:
    """('models', 1, 'name') from a whole-file check's message that starts 'models[1].name: ...'."""
    m = re.match(r"(?:Value error, )?(\w+)\[(\d+)\]\.(\w+): ", message)
    return (m[1], int(m[2]), m[3]) if m else ()


def _line(node, loc: tuple) -> int:
    """1-based line of the deepest YAML node along ``loc`` that exists."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == key), None)
            if node is None:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line
