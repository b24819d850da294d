"""LightGBM: ``lightgbm.train(..., callbacks=[log_evaluation(run)])`` logs every validation metric after each
iteration as ``<set>-<metric>`` at step = iteration, and the training params once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightgbm  # noqa: F401  (the callback's contract is lightgbm's; fail here, not at the first iteration)

from runstream.integrations import numeric
from runstream.sdk.run import Run


def log_evaluation(run: Run, *, log_params: bool = True) -> Callable[[Any], None]:
    state = {"params_logged": not log_params}

    def callback(env: Any) -> None:
        if not state["params_logged"]:
            run.log_params({f"lightgbm.{k}": v for k, v in (env.params or {}).items()})
            state["params_logged"] = True
        values = numeric({f"{data}-{name}": result for data, name, result, *_ in env.evaluation_result_list or []})
        if values:
            run.log(values, step=env.iteration)

    callback.order = 30  # type: ignore[attr-defined]  # after lightgbm's own evaluation
    return callback
