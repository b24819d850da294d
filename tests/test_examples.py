"""examples/tracker_tour.py, run as a user runs it, against the test stack: every installed integration trains,
a run is resumed, runs are searched and compared, two losses are plotted, system metrics are shown."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Stack

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tracker_tour(stack: Stack, token: str, tmp_path: Path) -> None:
    c = stack.config
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSTREAM_")}
    env.update(RUNSTREAM_URL=stack.ingest_addr, RUNSTREAM_TOKEN=token, RUNSTREAM_SQL_URL=f"http://{c.sink.sql_listen}",
               RUNSTREAM_CLICKHOUSE_DATABASE=c.clickhouse.database, RUNSTREAM_DATA_DIR=str(tmp_path / "home"),
               KERAS_BACKEND="jax", TOUR_PROJECT="tour", TOUR_PLOT=str(tmp_path / "loss.png"))
    res = subprocess.run([sys.executable, str(ROOT / "examples" / "tracker_tour.py")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "trained with: numpy loop, scikit-learn, xgboost, lightgbm, keras" in out, out
    assert "6 runs in tour" in out
    resumed = ast.literal_eval(out.split("resumed run: ")[1].splitlines()[0])
    # Two sessions; acknowledged (summed over them) equals stored: 100 steps of 2 metrics, plus the system metrics
    # of the first session (sampled each second).
    assert resumed["sessions"] == 2 and resumed["points_acked"] == resumed["points_stored"] >= 200, resumed
    # The param compares as a number: lr=0.1 is in, lr=0.01 is out (its val_loss is under 1.0 as well, once resumed).
    fast = out.split("lr >= 0.05 and val_loss < 1.0:")[1].splitlines()[0]
    assert "'sgd-lr0.1'" in fast and "'sgd-lr0.01'" not in fast, fast
    assert "sys/cpu_percent" in out and "sys/proc_rss_mb" in out
    assert (tmp_path / "loss.png").stat().st_size > 5_000
