"""fastjson.dumps: orjson's bytes where it can write the value, json's where it cannot, and the
same value read back either way."""

import json
import math

import pytest

from herd import fastjson


@pytest.mark.parametrize("value", [
    {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "temperature": 0.7, "n": 1},
    {"big": 10**30, "small": -(2**64)},  # beyond 64 bits: json writes it
    {"text": "lone \ud800 surrogate"},  # not UTF-8: json escapes it
    [0.1 + 0.2, 1e-7, 1e22, -0.0, True, None, ""],
])
def test_what_is_written_reads_back_as_the_same_value(value):
    out = fastjson.dumps(value)
    assert isinstance(out, bytes)
    assert json.loads(out) == value


def test_numpy_scalars_are_written_as_json_writes_them():
    np = pytest.importorskip("numpy")
    assert json.loads(fastjson.dumps({"p": np.float64(0.25)})) == {"p": 0.25}


def test_nan_is_written_as_null_which_is_json():
    assert fastjson.dumps({"cost": math.nan}) == b'{"cost":null}'


def test_what_json_refuses_is_still_refused():
    import datetime

    for value in ({"since": datetime.date(2024, 1, 1)}, {"raw": b"bytes"}):
        with pytest.raises(TypeError):
            fastjson.dumps(value)
