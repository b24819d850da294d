"""Hugging Face Transformers: ``Trainer(..., callbacks=[RunstreamCallback(run)])`` logs what the Trainer logs
(loss, learning rate, eval metrics) at its global step, and the TrainingArguments as params. Main process only."""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from runstream.integrations import numeric
from runstream.sdk.run import Run


class RunstreamCallback(TrainerCallback):  # type: ignore[misc]
    def __init__(self, run: Run) -> None:
        self.run = run

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.run.log_params({f"hf.{k}": v for k, v in args.to_dict().items()
                                 if isinstance(v, (int, float, str, bool)) or v is None})

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            values = numeric(logs)
            if values:
                self.run.log(values, step=state.global_step)
