"""JSON written as bytes on the gateway's path, where the standard library's encoder is a
measurable share of a request's CPU: orjson for what it can write, Python's json for the rest
(integers beyond 64 bits, strings with lone surrogates, NumPy scalars), so nothing json could
write is refused. Two differences from json, both allowed by JSON: no spaces after separators,
and non-ASCII text as UTF-8 rather than \\u escapes; and NaN is written as null, not NaN (which is
not JSON)."""

from __future__ import annotations

import json

import orjson


def dumps(value) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:
        return json.dumps(value).encode()
