"""A chat-completions request as herd sees it: the fields it checks, the text the router reads,
the size it estimates, and the herd options it strips before forwarding. Everything else in the
body reaches the backend untouched."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from herd.gateway.errors import GatewayError
from herd.gateway.validate import check_headers, check_sampling, check_spellings, finite_float, flag, shown

ROLES = {"system", "developer", "user", "assistant", "tool", "function"}
# How many recent user turns the router reads; the last one is what is being asked.
ROUTER_TURNS = 3
# Conservative for the context-window check (real tokenizers give ~4 chars per token in English),
# so a conversation near the limit goes to a bigger window rather than to a truncation error.
CHARS_PER_TOKEN_WINDOW = 3.0
CHARS_PER_TOKEN_COST = 4.0
TOKENS_PER_MESSAGE = 4
TOKENS_PER_IMAGE = 1000  # a high-detail image is ~765 tokens in OpenAI's accounting


@dataclass(frozen=True)
class HerdOptions:
    """Per-request constraints, from the body's ``herd`` object or ``metadata`` keys ``herd_*``."""

    max_cost_usd: float | None = None
    tags: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    session: str | None = None  # pins a blend's per-turn draws; default: the conversation's opening
    private: bool = False  # only on_prem models (the tag is added to ``tags``)
    task: str | None = None  # the query's task (a benchmark of the router's mixture, a category), if known

    def as_dict(self) -> dict:
        return {"max_cost_usd": self.max_cost_usd, "tags": list(self.tags), "exclude": list(self.exclude),
                "session": self.session, "private": self.private, "task": self.task}


@dataclass
class ChatRequest:
    body: dict  # what is forwarded (herd options removed)
    model: str
    stream: bool
    router_text: str
    prompt_tokens_high: int
    prompt_chars: int
    n_messages: int
    max_tokens: int | None
    n: int = 1
    options: HerdOptions = field(default_factory=HerdOptions)
    turn: int = 1  # user turns so far, this one included: a conversation's position is in its history
    opening: str = ""  # the first user turn, which keys a conversation that names no session
    request_id: str = ""
    key: str | None = None  # the client key's name, for the choice log
    path: str = "/chat/completions"  # the backends' endpoint: /completions for a prompt passed through

    @property
    def wants_usage(self) -> bool:
        """The client asked a stream for its usage (herd asks backends for it either way)."""
        return bool((self.body.get("stream_options") or {}).get("include_usage"))

    @property
    def session(self) -> str:
        return self.options.session if self.options.session is not None else self.opening

    def window_tokens(self) -> int:
        """Tokens the conversation may need, prompt plus requested completion, estimated high."""
        return self.prompt_tokens_high + TOKENS_PER_MESSAGE * self.n_messages + (self.max_tokens or 0)

    def prompt_tokens_estimate(self) -> float:
        return self.prompt_chars / CHARS_PER_TOKEN_COST + TOKENS_PER_MESSAGE * self.n_messages


def parse_chat(raw: bytes, headers: Mapping[str, str] | None = None) -> ChatRequest:
    """The request in ``raw`` with herd's options from its body and ``headers`` (x-herd-session,
    x-herd-private), every value herd reads checked."""
    body, model = _read_body(raw, "'herd', 'herd:<policy>' or a pool model's name")
    stream = body.get("stream") or False
    texts, users = _read_messages(body.get("messages"))
    options = _options(body, headers or {})
    # The router reads what is being asked: the recent user turns, or else the last message with text.
    router_text = "\n".join(users[-ROUTER_TURNS:]) or next((t for t in reversed(texts) if t), "")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    # Everything the backend will tokenize: messages, tool calls, tool definitions.
    extra = [json.dumps(m.get("tool_calls") or m.get("function_call")) for m in body["messages"]
             if m.get("tool_calls") or m.get("function_call")]
    if body.get("tools") or body.get("functions"):
        extra.append(json.dumps(body.get("tools") or body.get("functions")))
    return ChatRequest(body=body, model=model, stream=stream, router_text=router_text,
                       prompt_tokens_high=sum(_tokens_high(t) for t in texts + extra) + TOKENS_PER_IMAGE * _images(body),
                       prompt_chars=sum(map(len, texts + extra)), n_messages=len(texts), max_tokens=max_tokens,
                       n=body.get("n") or 1, options=options, turn=max(1, len(users)), opening=users[0] if users else "")


def parse_completion(raw: bytes, headers: Mapping[str, str] | None = None) -> ChatRequest:
    """A completions request (a prompt for a base model), passed through to the pool model it
    names; herd's options and checks as for chat."""
    body, model = _read_body(raw, "a pool model's name")
    prompt = body.get("prompt")
    texts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise GatewayError(400, "'prompt' must be a string or a non-empty list of strings", param="prompt")
    options = _options(body, headers or {})
    return ChatRequest(body=body, model=model, stream=body.get("stream") or False, router_text=texts[0],
                       prompt_tokens_high=sum(map(_tokens_high, texts)), prompt_chars=sum(map(len, texts)),
                       n_messages=0, max_tokens=body.get("max_tokens"), n=(body.get("n") or 1) * len(texts),
                       options=options, path="/completions")


def _read_body(raw: bytes, models: str) -> tuple[dict, str]:
    """The request's JSON object and its model, with the sampling fields herd reads checked."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as e:
        raise GatewayError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    except RecursionError:
        raise GatewayError(400, "request body is nested too deeply", code="invalid_json") from None
    if not isinstance(body, dict):
        raise GatewayError(400, f"request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise GatewayError(400, f"'model' is required: {models}", param="model")
    check_sampling(body)
    return body, model


def _read_messages(messages) -> tuple[list[str], list[str]]:
    if not isinstance(messages, list) or not messages:
        raise GatewayError(400, "'messages' must be a non-empty list of {role, content} objects", param="messages")
    texts, users = [], []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise GatewayError(400, f"{where} must be an object, got {type(m).__name__}", param=where)
        role = m.get("role")
        if role not in ROLES:
            raise GatewayError(400, f"{where}.role must be one of {sorted(ROLES)}, got {json.dumps(role)}", param=f"{where}.role")
        text = _content_text(m.get("content"), where)
        texts.append(text)
        if role == "user":
            users.append(text)
    return texts, users


def _content_text(content, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict):
                raise GatewayError(400, f"{where}.content[{j}] must be an object", param=f"{where}.content")
            if "text" in part:  # a text part whose text is not a string: no backend reads it the same way
                if not isinstance(part["text"], str):
                    raise GatewayError(400, f"{where}.content[{j}].text must be a string, got {shown(part['text'])}",
                                       param=f"{where}.content[{j}].text")
                parts.append(part["text"])
        return "\n".join(parts)
    raise GatewayError(400, f"{where}.content must be a string or a list of parts, got {type(content).__name__}",
                       param=f"{where}.content")


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _tokens_high(text: str) -> int:
    """A high estimate of tokens: ~3 characters per token for ASCII (English runs ~4), one per
    character beyond it (CJK text runs near one)."""
    ascii_chars = sum(c < "\x80" for c in text) if not text.isascii() else len(text)
    return math.ceil(ascii_chars / CHARS_PER_TOKEN_WINDOW) + (len(text) - ascii_chars)


def _images(body: dict) -> int:
    return sum(1 for m in body["messages"] if isinstance(m.get("content"), list)
               for part in m["content"] if isinstance(part, dict) and part.get("type") in ("image_url", "input_image"))


def _options(body: dict, headers: Mapping[str, str]) -> HerdOptions:
    """Pop herd's own options so backends never see them."""
    check_spellings(body)
    check_headers(headers)
    raw = body.pop("herd", None)
    if raw is None:
        raw = {}
    elif not isinstance(raw, dict):
        raise GatewayError(400, "'herd' must be an object such as {\"max_cost_usd\": 0.01, \"private\": true}", param="herd")
    meta, private_meta = body.get("metadata"), False
    if isinstance(meta, dict):
        for key in [k for k in meta if isinstance(k, str) and k.startswith("herd_")]:
            value = meta.pop(key)
            if key == "herd_private":
                private_meta = flag(value, "metadata.herd_private")
            else:
                raw.setdefault(key.removeprefix("herd_"), _from_metadata(key, value))
        if not meta:
            body.pop("metadata")
    unknown = set(raw) - {"max_cost_usd", "tags", "private", "exclude", "session", "task"}
    if unknown:
        raise GatewayError(400, f"unknown herd option(s) {sorted(unknown)}; known: max_cost_usd, tags, private, exclude, "
                                "session, task", param="herd")
    task = raw.get("task")
    if task is not None and (not isinstance(task, str) or not task.strip() or len(task) > 200):
        raise GatewayError(400, f"herd.task must be a task name (a non-empty string of at most 200 characters), "
                                f"got {json.dumps(task)[:80]}", param="herd.task")
    session = raw.get("session", headers.get("x-herd-session") or None)
    if session is not None and (not isinstance(session, (str, int)) or isinstance(session, bool)):
        raise GatewayError(400, f"herd.session must be a string, got {json.dumps(session)}", param="herd.session")
    cost = raw.get("max_cost_usd")
    if cost is not None and (not isinstance(cost, (int, float)) or isinstance(cost, bool) or cost < 0):
        raise GatewayError(400, f"herd.max_cost_usd must be a number >= 0, got {json.dumps(cost)}", param="herd.max_cost_usd")
    tags = _str_list(raw.get("tags", []), "herd.tags")
    # Private if any of body, metadata and header says so: a privacy flag fails closed.
    private = flag(raw.get("private", False), "herd.private") or private_meta
    if "x-herd-private" in headers:
        private = flag(headers["x-herd-private"], "x-herd-private") or private
    if private and "on_prem" not in tags:
        tags.append("on_prem")
    return HerdOptions(max_cost_usd=cost, tags=tuple(tags), exclude=tuple(_str_list(raw.get("exclude", []), "herd.exclude")),
                       session=None if session is None else str(session), private=private,
                       task=None if task is None else task.strip())


def _from_metadata(key: str, value):
    """Metadata values are strings: 'true', '0.01', 'a,b'."""
    if not isinstance(value, str):
        return value
    if key in ("herd_session", "herd_task"):
        return value
    if key == "herd_max_cost_usd":
        try:
            return float(value)
        except ValueError:
            raise GatewayError(400, f"metadata.herd_max_cost_usd must be a number, got {value!r}", param="metadata") from None
    return [v.strip() for v in value.split(",") if v.strip()]


def _str_list(value, param: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise GatewayError(400, f"{param} must be a list of strings, got {json.dumps(value)}", param=param)
    return list(value)
