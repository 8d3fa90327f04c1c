"""Results files are strict JSON: undefined metrics are null, never the NaN token."""

import json
import math
import pathlib
import types

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


def test_a_non_finite_number_alone_is_null():
    for value in (-np.inf, np.float16("inf"), np.array(np.nan)):
        assert strict_loads(json_text(value)) is None


def test_mappings_of_any_kind_and_numpy_keys():
    value = types.MappingProxyType({np.int64(1): "a", 2.5: np.uint64(2**63), False: None})
    assert strict_loads(json_text(value)) == {"1": "a", "2.5": 2**63, "false": None}


def test_values_json_cannot_hold_are_refused_naming_where():
    with pytest.raises(TypeError, match=r"value\['rows'\]\[1\]\['ids'\] is a set"):
        json_text({"rows": [{}, {"ids": {1, 2}}]})
    with pytest.raises(TypeError, match=r"value\['per_image'\] has the key nan"):
        json_text({"per_image": {math.nan: 1.0}})
    with pytest.raises(TypeError, match="value is a PosixPath"):
        json_text(pathlib.Path("/tmp"))
