"""JSON text for results files that strict readers accept.

Python's `json` writes NaN and infinity as `NaN` / `Infinity`, which are not JSON: jq,
JavaScript's `JSON.parse` and most other readers refuse the whole file. Metrics are NaN
where they are undefined (SEG of an image without reference objects, a rate over no
pixels), so results files write those as `null`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """Return `value` as strict JSON: non-finite numbers become null, numpy values plain.

    Args:
        value: nested mappings, lists, tuples, numpy arrays and scalars, str, None.
        indent: as `json.dumps`; None for one line.

    Returns:
        JSON text without NaN or Infinity tokens (+inf and -inf are null too: a results
        file has no use for their sign, and JSON no spelling for it).

    Example:
        >>> json_text({"seg": float("nan"), "n": np.int64(3), "ap": np.float32(0.5)}, indent=None)
        '{"seg": null, "n": 3, "ap": 0.5}'

    Raises:
        TypeError: naming where, for a value JSON cannot hold (a set, an object) or a
            mapping key that is not a string, number or boolean.
    """
    return json.dumps(_finite(value, "value"), indent=indent, allow_nan=False)


def _finite(value: Any, where: str) -> Any:
    if isinstance(value, Mapping):
        return {_key(key, where): _finite(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_finite(item, f"{where}[{index}]") for index, item in enumerate(value)]
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    raise TypeError(
        f"{where} is a {type(value).__name__}; expected a number, string, None, list or mapping"
    )


def _key(key: Any, where: str) -> str | int | float | bool:
    """A mapping key as `json.dumps` takes it (it writes numbers and booleans as text)."""
    if isinstance(key, str):
        return key
    if isinstance(key, (bool, np.bool_)):
        return bool(key)
    if isinstance(key, (int, np.integer)):
        return int(key)
    if isinstance(key, (float, np.floating)) and math.isfinite(key):
        return float(key)
    raise TypeError(f"{where} has the key {key!r}; expected a string or a finite number")
