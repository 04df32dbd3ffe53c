"""Checks of the request values herd itself reads. Each fails closed with a 400 that names the
field: a value herd would have to guess at (a privacy flag spelled oddly, an option under a
near-miss name) is refused, never read as "no"."""

from __future__ import annotations

import json
import math
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from herd.gateway.errors import GatewayError

TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
# Request headers herd reads; any other x-herd-* header is a misspelling, refused.
HEADERS = ("x-herd-session", "x-herd-private")


INT32, INT64 = 2**31 - 1, 2**63 - 1


class Sampling(BaseModel):
    """The body's fields herd reads beside messages and its options, in OpenAI's ranges: a value
    outside them would fail at the backend anyway, or worse, in herd (a seed that is not an
    integer, n = 10**400). Other fields pass through unread."""

    model_config = ConfigDict(extra="ignore", strict=True)
    stream: Optional[bool] = Field(None, description="a boolean")
    n: Optional[int] = Field(None, ge=1, le=128, description="an integer from 1 to 128")
    max_tokens: Optional[int] = Field(None, ge=1, le=INT32, description=f"a positive integer up to {INT32}")
    max_completion_tokens: Optional[int] = Field(None, ge=1, le=INT32, description=f"a positive integer up to {INT32}")
    temperature: Optional[float] = Field(None, ge=0, le=2, description="a number from 0 to 2")
    top_p: Optional[float] = Field(None, ge=0, le=1, description="a number from 0 to 1")
    seed: Optional[int] = Field(None, ge=-INT64 - 1, le=INT64, description="a 64-bit integer")
    stream_options: Optional[dict] = Field(None, description='an object such as {"include_usage": true}')


def check_sampling(body: dict) -> None:
    try:
        Sampling.model_validate(body)
    except ValidationError as e:
        error = e.errors()[0]
        name = str(error["loc"][0])
        rule = Sampling.model_fields[name].description
        raise GatewayError(400, f"'{name}' must be {rule}, got {shown(error['input'])}", param=name) from None


def finite_float(text: str) -> float:
    """JSON's parse_float for requests: 1e999 is no number a backend can read back."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def flag(value, param: str) -> bool:
    """A yes/no option: JSON true/false, 1/0, or one of TRUE_WORDS/FALSE_WORDS in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    word = value.strip().lower() if isinstance(value, str) else None
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise GatewayError(400, f"{param} must be true or false ({'/'.join(TRUE_WORDS)} or {'/'.join(FALSE_WORDS)}), "
                            f"got {shown(value)}", param=param, code="invalid_flag")


def check_spellings(body: dict) -> None:
    """Refuse herd's options under any name but ``herd`` and metadata ``herd_*``: a misspelled
    ``"Herd": {"private": true}`` would otherwise reach a public model as an unknown field."""
    meta = body.get("metadata")
    for where, keys in (("", body), ("metadata.", meta if isinstance(meta, dict) else {})):
        for key in keys:
            if isinstance(key, str) and _herdish(key) and key != "herd" and not (where and key.startswith("herd_")):
                raise GatewayError(400, f"unknown field {where}{key}: herd's options go in 'herd' (an object) or "
                                        "metadata 'herd_<option>' (lower case)", param=f"{where}{key}",
                                   code="unknown_herd_option")
    if isinstance(meta, dict) and "herd" in meta:
        raise GatewayError(400, "unknown field metadata.herd: use metadata 'herd_<option>' strings or a top-level "
                                "'herd' object", param="metadata.herd", code="unknown_herd_option")


def check_headers(headers) -> None:
    for name in headers.keys():
        if name.lower().startswith("x-herd-") and name.lower() not in HEADERS:
            raise GatewayError(400, f"unknown header {name}; herd reads {', '.join(HEADERS)}", param=name,
                               code="unknown_herd_option")


def _herdish(key: str) -> bool:
    k = key.lower().replace("-", "_")
    return k == "herd" or k.startswith("herd_")


def shown(value) -> str:
    """A value quoted in an error message, cut short."""
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."
