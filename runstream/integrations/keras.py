"""Keras 3 (any backend): ``model.fit(..., callbacks=[RunstreamCallback(run)])`` logs the epoch's logs (loss,
metrics, val_*) at step = epoch, optionally every ``batch_every`` training batches as ``batch/<name>`` at the
global batch number, and the optimizer's config once."""

from __future__ import annotations

from typing import Any

import keras

from runstream.integrations import numeric
from runstream.sdk.run import Run


class RunstreamCallback(keras.callbacks.Callback):  # type: ignore[misc]
    def __init__(self, run: Run, *, batch_every: int = 0) -> None:
        super().__init__()
        self.run = run
        self.batch_every = batch_every
        self._batches = 0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            opt = self.model.optimizer.get_config()
            self.run.log_params({f"keras.optimizer.{k}": v for k, v in opt.items()
                                 if isinstance(v, (int, float, str, bool)) or v is None})
        except (AttributeError, ValueError):
            pass

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._batches += 1
        if self.batch_every and self._batches % self.batch_every == 0 and logs:
            self.run.log({f"batch/{k}": v for k, v in numeric(logs).items()}, step=self._batches)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        values = numeric(logs or {})
        if values:
            self.run.log(values, step=epoch)
