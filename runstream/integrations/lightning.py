"""PyTorch Lightning: ``Trainer(logger=RunstreamLogger(run))`` logs what the LightningModule logs (``self.log``)
at the trainer's step, and the hyperparameters (``save_hyperparameters``) as params. Rank zero only."""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from lightning.pytorch.loggers.logger import Logger
from lightning.pytorch.utilities import rank_zero_only

from runstream.integrations import numeric
from runstream.sdk.run import Run


class RunstreamLogger(Logger):  # type: ignore[misc]
    def __init__(self, run: Run, *, finish: bool = False) -> None:
        super().__init__()
        self.run = run
        self.finish_run = finish  # finish the run when the trainer finalizes (else the caller does)

    @property
    def name(self) -> str:
        return self.run.project

    @property
    def version(self) -> str:
        return self.run.id

    @rank_zero_only  # type: ignore[misc]
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        values = vars(params) if isinstance(params, Namespace) else dict(params)
        self.run.log_params(values)

    @rank_zero_only  # type: ignore[misc]
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        values = numeric(metrics)
        if values:
            self.run.log(values, step=step)

    @rank_zero_only  # type: ignore[misc]
    def finalize(self, status: str) -> None:
        if self.finish_run:
            self.run.finish("finished" if status == "success" else "failed", timeout=0)
