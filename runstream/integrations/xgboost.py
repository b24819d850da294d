"""XGBoost: ``xgboost.train(..., callbacks=[RunstreamCallback(run)])`` logs every evaluation metric of every
``evals`` set after each boosting round, as ``<set>-<metric>`` at step = round, and the booster's config once."""

from __future__ import annotations

import json
from typing import Any

import xgboost

from runstream.sdk.run import Run


class RunstreamCallback(xgboost.callback.TrainingCallback):  # type: ignore[misc]
    def __init__(self, run: Run, *, log_params: bool = True) -> None:
        super().__init__()
        self.run = run
        self.log_params = log_params

    def before_training(self, model: Any) -> Any:
        if self.log_params:
            try:
                cfg = json.loads(model.save_config())["learner"]
                params = {**cfg.get("gradient_booster", {}).get("tree_train_param", {}),
                          **cfg.get("learner_train_param", {}), **cfg.get("objective", {}).get("reg_loss_param", {})}
                self.run.log_params({f"xgboost.{k}": _typed(v) for k, v in params.items()})
            except (KeyError, ValueError, xgboost.core.XGBoostError):
                pass
        return model

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, dict[str, list[Any]]]) -> bool:
        values: dict[str, float] = {}
        for data, metrics in evals_log.items():
            for name, history in metrics.items():
                last = history[-1]
                values[f"{data}-{name}"] = float(last[0] if isinstance(last, tuple) else last)
        if values:
            self.run.log(values, step=epoch)
        return False  # never stop training


def _typed(value: Any) -> Any:
    """XGBoost keeps its config as strings ("3", "0.3"): numbers become numbers, so a search by value finds them."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                number = kind(value)
            except ValueError:
                continue
            if number == number and abs(number) != float("inf"):  # not NaN or infinite
                return number
    return value
