"""JSON written as bytes on the gateway's path, where the standard library's encoder is a
measurable share of a request's CPU: orjson for what it can write, Python's json for the rest
(integers beyond 64 bits, strings with lone surrogates, NumPy scalars, subclasses), so nothing
json could write is refused, and what json refuses (dates, dataclasses) is still refused.
Differences from json, all allowed by JSON: no spaces after separators, non-ASCII text as UTF-8
rather than \\u escapes, and NaN written as null (json's NaN is not JSON)."""

from __future__ import annotations

import json

import orjson

# Types orjson writes and json refuses are handed back to json, which refuses them.
_AS_JSON = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_PASSTHROUGH_SUBCLASS


def dumps(value) -> bytes:
    try:
        return orjson.dumps(value, option=_AS_JSON)
    except TypeError:
        return json.dumps(value).encode()
