"""Results files are strict JSON: undefined metrics are null, never the NaN token."""

import json
import math

import numpy as np
import pytest

from biounet.data.jsontext import json_text


def strict_loads(text):
    def refuse(token):
        raise ValueError(f"non-JSON token {token}")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_numbers_become_null_at_any_depth():
    value = {
        "seg": math.nan,
        "rates": [np.float32(0.25), np.inf, -np.inf],
        "rows": ({"n": np.int64(3), "ok": np.bool_(True), "map": np.array([1.5, np.nan])},),
    }
    assert strict_loads(json_text(value)) == {
        "seg": None,
        "rates": [0.25, None, None],
        "rows": [{"n": 3, "ok": True, "map": [1.5, None]}],
    }


def test_python_json_would_have_written_nan():
    # the reason for json_text: json.dumps' default output is refused by strict readers
    with pytest.raises(ValueError, match="non-JSON token NaN"):
        strict_loads(json.dumps({"seg": math.nan}))


def test_values_json_cannot_hold_are_refused():
    with pytest.raises(TypeError, match="set"):
        json_text({"ids": {1, 2}})
