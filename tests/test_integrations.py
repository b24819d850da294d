"""Framework integrations with the real libraries, logging into the real stack: XGBoost, LightGBM, scikit-learn
autolog and Keras (JAX backend). PyTorch Lightning and Transformers run where torch is installed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

import runstream
from runstream.sdk.transport import GrpcTransport
from tests.conftest import Stack
from tests.helpers import wait_until

os.environ.setdefault("KERAS_BACKEND", "jax")  # Keras 3 on CPU without TensorFlow


def data(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype("float32")
    return x, (x @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + rng.normal(scale=0.1, size=n)).astype("float32")


def series(stack: Stack, run_id: str, n_metrics: int, per_metric: int) -> dict[str, list[int]]:
    def got() -> dict[str, list[int]] | None:
        rows = stack.query("SELECT metric, groupArray(step) FROM (SELECT metric, step FROM {db}.metrics WHERE "
                           "run_id = {r:String} ORDER BY step) GROUP BY metric", r=run_id)
        out = {m: list(s) for m, s in rows}
        return out if len(out) >= n_metrics and all(len(s) >= per_metric for s in out.values()) else None
    result = wait_until(got, 60, f"{n_metrics} metrics of {per_metric} points for {run_id}")
    assert isinstance(result, dict)
    return result


def param(stack: Stack, run_id: str, key: str) -> str:
    """A stored param of the run, once the sink stored it (params travel in batches of their own)."""
    def stored() -> dict[str, str]:
        return dict(stack.query("SELECT key, value FROM {db}.params FINAL WHERE run_id = {r:String}", r=run_id))
    return str(wait_until(lambda: stored().get(key), 30, f"param {key} of {run_id}"))


@pytest.fixture
def new_run(stack: Stack, token: str, tmp_path: Path):
    def make(name: str) -> runstream.Run:
        return runstream.init("frameworks", name=name, transport=GrpcTransport(stack.ingest_addr, token),
                              spool_dir=str(tmp_path))
    return make


def test_xgboost(stack: Stack, new_run) -> None:
    import xgboost

    from runstream.integrations.xgboost import RunstreamCallback
    x, y = data()
    run = new_run("xgb")
    dtrain, dvalid = xgboost.DMatrix(x[:300], y[:300]), xgboost.DMatrix(x[300:], y[300:])
    xgboost.train({"max_depth": 3, "eta": 0.3, "objective": "reg:squarederror"}, dtrain, num_boost_round=12,
                  evals=[(dtrain, "train"), (dvalid, "valid")], callbacks=[RunstreamCallback(run)])
    assert run.finish(timeout=30)
    got = series(stack, run.id, 2, 12)
    assert got == {"train-rmse": list(range(12)), "valid-rmse": list(range(12))}
    rmse = stack.query("SELECT argMax(value, step), argMin(value, step) FROM {db}.metrics WHERE run_id = {r:String} "
                       "AND metric = 'train-rmse'", r=run.id)[0]
    assert rmse[0] < rmse[1]  # it learned
    assert param(stack, run.id, "xgboost.max_depth") == "3"  # a number, as the config gave it


def test_lightgbm(stack: Stack, new_run) -> None:
    import lightgbm

    from runstream.integrations.lightgbm import log_evaluation
    x, y = data()
    run = new_run("lgbm")
    train = lightgbm.Dataset(x[:300], y[:300])
    valid = lightgbm.Dataset(x[300:], y[300:], reference=train)
    lightgbm.train({"objective": "regression", "metric": ["l2", "l1"], "verbosity": -1, "num_leaves": 7}, train,
                   num_boost_round=15, valid_sets=[valid], valid_names=["valid"], callbacks=[log_evaluation(run)])
    assert run.finish(timeout=30)
    assert series(stack, run.id, 2, 15) == {"valid-l2": list(range(15)), "valid-l1": list(range(15))}
    assert param(stack, run.id, "lightgbm.num_leaves") == "7"


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # the MLP's few iterations, on purpose
def test_sklearn_autolog(stack: Stack, token: str, tmp_path: Path) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import LabelEncoder

    from runstream.integrations import sklearn as rs_sklearn
    x, y = data()
    labels = np.where(y > np.median(y), "high", "low")
    os.environ["RUNSTREAM_URL"], os.environ["RUNSTREAM_TOKEN"] = stack.ingest_addr, token
    rs_sklearn.autolog("sk-autolog", spool_dir=str(tmp_path))
    try:
        Ridge(alpha=0.5).fit(x, y)
        GridSearchCV(Ridge(), {"alpha": [0.1, 1.0]}, cv=2).fit(x, y)  # its inner fits belong to its run
        # Estimators whose fit, or an inner estimator's (LabelEncoder.fit(y)), takes other arguments than (X, y).
        LogisticRegression(max_iter=200).fit(x, labels)
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=50, random_state=0).fit(x, labels)
        LabelEncoder().fit(labels)
        folds = cross_val_score(Ridge(alpha=2), x, y, cv=3)
    finally:
        rs_sklearn.autolog(disable=True)
        del os.environ["RUNSTREAM_URL"], os.environ["RUNSTREAM_TOKEN"]
    want = ["GridSearchCV", "GridSearchCV-candidate-0", "GridSearchCV-candidate-1", "LabelEncoder", "LogisticRegression",
            "MLPClassifier", "Ridge", "cross_validate-Ridge"]
    runs = wait_until(lambda: (r := stack.query(
        "SELECT name, run_id FROM {db}.runs WHERE project = 'sk-autolog' AND status = 'finished' ORDER BY name"))
        and len(r) == len(want) and r, 60, "the autologged runs")
    assert [name for name, _ in runs] == want  # type: ignore[union-attr]
    by_name = dict(runs)  # type: ignore[arg-type]
    ridge = by_name["Ridge"]
    assert param(stack, ridge, "alpha") == "0.5"
    score = series(stack, ridge, 2, 1)
    assert set(score) == {"fit_time_s", "training_score"}
    assert stack.query("SELECT value FROM {db}.metrics WHERE run_id = {r:String} AND metric = 'training_score'",
                       r=ridge)[0][0] > 0.9
    search = by_name["GridSearchCV"]
    assert param(stack, search, "best.alpha") in ("0.1", "1.0")
    assert set(series(stack, search, 4, 1)) == {"fit_time_s", "training_score", "best_score", "candidates"}
    children = stack.query("SELECT name FROM {db}.run_starts WHERE parent_run_id = {r:String} ORDER BY name", r=search)
    assert [c[0] for c in children] == want[1:3]
    assert param(stack, by_name["GridSearchCV-candidate-1"], "alpha") == "1.0"
    assert "mean_test_score" in series(stack, by_name["GridSearchCV-candidate-0"], 5, 1)
    cv = series(stack, by_name["cross_validate-Ridge"], 3, 3)
    assert cv["test_score"] == [0, 1, 2]  # one run, a step per fold
    stored = stack.query("SELECT value FROM {db}.metrics WHERE run_id = {r:String} AND metric = 'test_score' "
                         "ORDER BY step", r=by_name["cross_validate-Ridge"])
    assert [round(v[0], 9) for v in stored] == [round(float(f), 9) for f in folds]


# Raised inside JAX's array conversion, not by anything of ours.
@pytest.mark.slow  # trains a JAX model
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_keras_on_jax(stack: Stack, new_run) -> None:
    import keras

    from runstream.integrations.keras import RunstreamCallback
    assert keras.backend.backend() == "jax"
    x, y = data()
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse", metrics=["mae"])
    run = new_run("keras")
    model.fit(x, y, epochs=4, batch_size=50, validation_split=0.25, verbose=0,
              callbacks=[RunstreamCallback(run, batch_every=2)])
    assert run.finish(timeout=30)
    got = series(stack, run.id, 6, 3)
    assert {"loss", "mae", "val_loss", "val_mae"} <= set(got) and got["loss"] == [0, 1, 2, 3]
    assert got["batch/loss"] == list(range(2, 25, 2))  # 6 batches per epoch x 4, every second one
    assert param(stack, run.id, "keras.optimizer.learning_rate").startswith("0.05")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("lightning") is None,
                    reason="torch and lightning are not installed")
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch's pytree, inside Lightning
@pytest.mark.filterwarnings("ignore::UserWarning")    # Lightning's advice on workers and GPUs
def test_lightning(stack: Stack, new_run) -> None:  # pragma: no cover - needs torch
    import lightning.pytorch as pl
    import torch

    from runstream.integrations.lightning import RunstreamLogger

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.save_hyperparameters({"lr": 0.05})
            self.layer = torch.nn.Linear(5, 1)

        def training_step(self, batch, _):
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.layer(x).squeeze(-1), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    x, y = data()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.tensor(x), torch.tensor(y)), batch_size=50)
    run = new_run("lightning")
    pl.Trainer(max_epochs=2, logger=RunstreamLogger(run), log_every_n_steps=1, enable_progress_bar=False,
               enable_checkpointing=False).fit(Model(), loader)
    assert run.finish(timeout=30)
    assert len(series(stack, run.id, 1, 16)["train_loss"]) >= 16
    assert param(stack, run.id, "lr") == "0.05"


@pytest.mark.skipif(importlib.util.find_spec("torch") is None or importlib.util.find_spec("transformers") is None,
                    reason="torch and transformers are not installed")
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.filterwarnings("ignore::UserWarning")
def test_transformers(stack: Stack, new_run, tmp_path: Path) -> None:  # pragma: no cover - needs torch
    import torch
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    from runstream.integrations.transformers import RunstreamCallback
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=2))
    rows = [{"input_ids": torch.randint(0, 50, (8,)), "attention_mask": torch.ones(8, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(32)]
    run = new_run("transformers")
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=6, logging_steps=1, per_device_train_batch_size=4,
                             report_to=[], use_cpu=True, save_strategy="no", learning_rate=1e-3)
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[RunstreamCallback(run)]).train()
    assert run.finish(timeout=30)
    loss = wait_until(lambda: (r := stack.query("SELECT groupArray(step) FROM (SELECT step FROM {db}.metrics WHERE "
                                                "run_id = {r:String} AND metric = 'loss' ORDER BY step)", r=run.id))
                      and len(r[0][0]) == 6 and r[0][0], 60, "six loss points")
    assert loss == [1, 2, 3, 4, 5, 6]
    assert "train_runtime" in series(stack, run.id, 1, 1)  # the summary the Trainer logs at the end
    assert param(stack, run.id, "hf.learning_rate") == "0.001"
