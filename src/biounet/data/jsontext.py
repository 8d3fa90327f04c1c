"""JSON text for results files that strict readers accept.

Python's `json` writes NaN and infinity as `NaN` / `Infinity`, which are not JSON: jq,
JavaScript's `JSON.parse` and most other readers refuse the whole file. Metrics are NaN
where they are undefined (SEG of an image without reference objects, a rate over no
pixels), so results files write those as `null`.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def json_text(value: Any, *, indent: int | None = 2) -> str:
    """Return `value` as strict JSON: NaN and infinities become null, numpy scalars numbers.

    Example:
        >>> json_text({"seg": float("nan"), "n": np.int64(3), "ap": np.float32(0.5)}, indent=None)
        '{"seg": null, "n": 3, "ap": 0.5}'

    Raises:
        TypeError: for a value JSON cannot hold (e.g. a set or an object).
    """
    return json.dumps(_finite(value), indent=indent, allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, np.ndarray):
        return _finite(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value
