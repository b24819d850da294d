"""A notebook-style tour of runstream as an ML engineer uses it: train small models with every framework
integration that is installed, resume a run, search runs by a numeric param and a latest metric, plot two runs'
loss from the read API, and look at the system metrics.

    runstream up &                      # in another terminal
    python examples/tracker_tour.py     # writes tour-loss.png, prints what it found

Against another stack: RUNSTREAM_URL / RUNSTREAM_TOKEN (ingest) and RUNSTREAM_SQL_URL (the SQL endpoint).
Needs the [read] extra; the integrations used are whichever of scikit-learn, XGBoost, LightGBM and Keras
are installed. tests/test_examples.py runs it against the test stack.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid

import numpy as np

import runstream

PROJECT = os.environ.get("TOUR_PROJECT", f"tour-{uuid.uuid4().hex[:6]}")
OUT = os.environ.get("TOUR_PLOT", "tour-loss.png")


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


# -- data: a small regression problem ---------------------------------------------------------------------
rng = np.random.default_rng(0)
X = rng.normal(size=(600, 5)).astype("float32")
y = (X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0]) + rng.normal(scale=0.1, size=600)).astype("float32")
Xtr, ytr, Xva, yva = X[:450], y[:450], X[450:], y[450:]
trained: list[str] = []

# -- a plain training loop, two learning rates, system metrics every second ----------------------------------
loops = {}
for lr in (0.01, 0.1):
    run = runstream.init(PROJECT, name=f"sgd-lr{lr}", config={"lr": lr, "model": "linear"}, system_interval_s=1.0)
    w = np.zeros(5, dtype="float32")
    for step in range(60):
        grad = 2 * Xtr.T @ (Xtr @ w - ytr) / len(ytr)
        w -= lr * grad
        run.log({"loss": float(np.mean((Xtr @ w - ytr) ** 2)), "val_loss": float(np.mean((Xva @ w - yva) ** 2))},
                step=step)
        time.sleep(0.03)
    run.finish()
    loops[lr] = run
trained.append("numpy loop")

# -- resume: the lr=0.01 run trains 40 more steps in a "later process" -------------------------------------
resumed = runstream.init(PROJECT, run_id=loops[0.01].id, resume=True, start_step=60, system_interval_s=0)
w = np.zeros(5, dtype="float32")
for step in range(60, 100):
    resumed.log({"loss": 1.0 / step, "val_loss": 1.2 / step})
resumed.finish()

# -- framework integrations that are installed --------------------------------------------------------------
if installed("sklearn"):
    from sklearn.linear_model import Ridge

    from runstream.integrations import sklearn as rs_sklearn

    rs_sklearn.autolog(PROJECT)
    Ridge(alpha=0.3).fit(Xtr, ytr)
    rs_sklearn.autolog(disable=True)
    trained.append("scikit-learn")
if installed("xgboost"):
    import xgboost

    from runstream.integrations.xgboost import RunstreamCallback as XgbCallback

    run = runstream.init(PROJECT, name="xgboost", config={"lr": 0.3}, system_interval_s=0)
    xgboost.train({"max_depth": 3, "eta": 0.3}, xgboost.DMatrix(Xtr, ytr), num_boost_round=20,
                  evals=[(xgboost.DMatrix(Xva, yva), "valid")], callbacks=[XgbCallback(run)])
    run.finish()
    trained.append("xgboost")
if installed("lightgbm"):
    import lightgbm

    from runstream.integrations.lightgbm import log_evaluation

    run = runstream.init(PROJECT, name="lightgbm", config={"lr": 0.1}, system_interval_s=0)
    train = lightgbm.Dataset(Xtr, ytr)
    lightgbm.train({"objective": "regression", "verbosity": -1, "learning_rate": 0.1}, train, num_boost_round=20,
                   valid_sets=[lightgbm.Dataset(Xva, yva, reference=train)], valid_names=["valid"],
                   callbacks=[log_evaluation(run)])
    run.finish()
    trained.append("lightgbm")
if installed("keras") and (installed("jax") or installed("tensorflow") or installed("torch")):
    if installed("jax"):
        os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    from runstream.integrations.keras import RunstreamCallback as KerasCallback

    run = runstream.init(PROJECT, name="keras", config={"lr": 0.05}, system_interval_s=0)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="mse")
    model.fit(Xtr, ytr, epochs=5, batch_size=64, validation_data=(Xva, yva), verbose=0, callbacks=[KerasCallback(run)])
    run.finish()
    trained.append("keras")
print("trained with:", ", ".join(trained))

# -- read it back: search, compare, plot, system metrics ----------------------------------------------------
api = runstream.Api()
deadline = time.monotonic() + 60
while True:
    runs = api.runs(PROJECT)
    resumed_row = runs[runs.run_id == loops[0.01].id]
    if (len(runs) >= len(trained) + 1 and (runs.status == "finished").all() and not resumed_row.empty
            and resumed_row.sessions.iloc[0] == 2 and resumed_row.points_acked.notna().iloc[0]):
        break
    if time.monotonic() > deadline:
        sys.exit(f"the runs of {PROJECT} were not all stored within 60 s")
    time.sleep(0.5)
print(f"{len(runs)} runs in {PROJECT}")

fast = api.runs(PROJECT, params={"lr": (">=", 0.05)}, metrics={"val_loss": ("<", 1.0)})
print("lr >= 0.05 and val_loss < 1.0:", sorted(fast["name"]))
stored = api.client.query("SELECT count() FROM metrics WHERE run_id = {r:String}", parameters={"r": loops[0.01].id}).result_rows[0][0]
print("resumed run:", {**resumed_row[["name", "sessions", "points_acked"]].to_dict("records")[0], "points_stored": stored})

a, b = loops[0.01].id, loops[0.1].id
print(api.compare([a, b]).loc[["name", "params.lr", "metrics.loss"]].to_string())

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

fig, ax = plt.subplots(figsize=(6, 3.5))
for run_id, label in ((a, "lr=0.01 (resumed at 60)"), (b, "lr=0.1")):
    h = api.history(run_id, "loss")
    ax.plot(h["step"], h["value"], label=label)
ax.set_yscale("log")
ax.set_xlabel("step")
ax.set_ylabel("loss")
ax.legend()
fig.tight_layout()
fig.savefig(OUT)
print(f"plot: {OUT}")

sysm = api.client.query_df("SELECT metric, count() AS samples, round(avg(value), 2) AS mean FROM metrics "
                           "WHERE run_id = {r:String} AND startsWith(metric, 'sys/') GROUP BY metric ORDER BY metric",
                           parameters={"r": b})
print("system metrics of", b)
print(sysm.to_string(index=False))
