"""Framework integrations: each module imports its framework when it is imported, so importing runstream never
loads one. They log through a runstream Run like any other code.

- ``runstream.integrations.sklearn``: ``autolog()`` (params, training score, fit time of every top-level fit)
- ``runstream.integrations.xgboost``: ``RunstreamCallback`` for ``xgboost.train`` / the sklearn API
- ``runstream.integrations.lightgbm``: ``log_evaluation(run)`` callback for ``lightgbm.train``
- ``runstream.integrations.keras``: ``RunstreamCallback`` for ``model.fit``
- ``runstream.integrations.lightning``: ``RunstreamLogger`` for ``lightning.pytorch.Trainer``
- ``runstream.integrations.transformers``: ``RunstreamCallback`` for ``transformers.Trainer``
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def numeric(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries that are real numbers (frameworks mix in strings, arrays and None)."""
    out: dict[str, float] = {}
    for k, v in values.items():
        if isinstance(v, bool):
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        out[str(k)] = f  # NaN and infinities too: a diverging loss is worth seeing
    return out
