"""Resumable artifact uploads through the mlflow role (runstream/mlflow/uploads.py), with the SDK's uploader, a
connection cut in the middle of a file, MLflow's own client reading the result, and the part protocol's edges."""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runstream
from runstream.sdk.transport import GrpcTransport
from tests.conftest import MlflowStack
from tests.helpers import StallingProxy, wait_until

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

PART = 1 << 20


def artifact_url(ml: MlflowStack, run_id: str, name: str, experiment: str = "") -> str:
    experiment = experiment or MlflowClient().get_run(run_id).info.experiment_id
    return f"{ml.url}/api/2.0/mlflow-artifacts/artifacts/{experiment}/{run_id}/artifacts/{name}"


def put(url: str, token: str, sha: str, span: str, total: int, body: bytes = b"") -> requests.Response:
    return requests.put(url, data=body, timeout=30, headers={
        "Authorization": f"Bearer {token}", "X-Runstream-Sha256": sha, "Content-Range": f"bytes {span}/{total}"})


_runs: dict[str, tuple[str, str]] = {}  # database -> a run made through the MLflow API, and its experiment


def stored_run(ml: MlflowStack) -> tuple[str, str]:
    """A run the artifact server knows, one per stack: (its id, its experiment's id)."""
    db = ml.config.clickhouse.database
    if db not in _runs:
        experiment = MlflowClient().create_experiment(f"uploads-{db}")
        _runs[db] = MlflowClient().create_run(experiment).info.run_id, experiment
    return _runs[db]


@pytest.mark.slow
def test_a_large_upload_cut_mid_transfer_resumes_from_the_bytes_the_server_holds(
        ml: MlflowStack, token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """log_artifact sends a file larger than one part in parts; the connection is cut in the middle of the third;
    the uploader asks the server how many bytes it holds and goes on from there. The file arrives whole (MLflow's
    client downloads it byte-equal), is recorded once, no part file is left, and the bytes sent are the file's
    size and less than one part more (starting again from zero would send the 2.5 MiB before the cut again)."""
    monkeypatch.setenv("RUNSTREAM_CLIENT_UPLOAD_PART_MIB", "1")
    size = 6 * PART + 12345
    big = tmp_path / "weights.bin"
    big.write_bytes(os.urandom(size))
    proxy = StallingProxy(ml.url.removeprefix("http://"))
    proxy.cut_at = 5 * PART // 2
    ingest = f"127.0.0.1:{ml.roles.stages['ingest'][0].port}"
    try:
        run = runstream.init("resumable", transport=GrpcTransport(ingest, token), token=token,
                             spool_dir=str(tmp_path / "spool"), system_interval_s=0)
        run.log({"loss": 1.0})
        art = run.log_artifact(big, upload=f"http://{proxy.addr}")
        assert run.finish(timeout=120)
    finally:
        proxy.close()
    assert proxy.cuts == 1
    assert size <= proxy.forwarded < size + PART, proxy.forwarded

    listed = MlflowClient().list_artifacts(run.id)
    assert [(f.path, f.file_size) for f in listed] == [("weights.bin", size)]
    out = Path(mlflow.artifacts.download_artifacts(artifact_uri=art.uri, dst_path=str(tmp_path / "back")))
    assert out.read_bytes() == big.read_bytes()
    folder = ml.config.mlflow_artifact_path / "resumable" / run.id
    assert sorted(p.name for p in folder.rglob("*")) == ["artifacts", "weights.bin"]  # no part file left
    sha = hashlib.sha256(big.read_bytes()).hexdigest()
    rows = wait_until(lambda: ml.query("SELECT uri, size, sha256 FROM {db}.artifacts WHERE run_id = {r:String}",
                                       r=run.id), 30, "the artifact record")
    assert rows == [(f"mlflow-artifacts:/resumable/{run.id}/artifacts/weights.bin", size, sha)]

    # Asked again once complete, the server says so (an answer lost on the way is not a reason to send it again).
    again = put(artifact_url(ml, run.id, "weights.bin"), token, sha, "*", size)
    assert again.status_code == 200 and again.json() == {"offset": size, "complete": True}


def test_parts_that_do_not_fit_are_refused_with_the_offset_to_send_from(ml: MlflowStack, token: str, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    run_id, _ = stored_run(ml)
    body = os.urandom(3000)
    sha = hashlib.sha256(body).hexdigest()
    url = artifact_url(ml, run_id, "f.bin")
    assert put(url, token, sha, "*", 3000).json() == {"offset": 0, "complete": False}
    assert put(url, token, sha, "0-999", 3000, body[:1000]).json() == {"offset": 1000, "complete": False}
    # An upload abandoned 8 days ago (mlflow.upload_part_ttl_h is 7 days), beside this one.
    assert put(url.replace("f.bin", "old.bin"), token, sha, "0-99", 3000, body[:100]).status_code == 200
    (stale,) = (ml.config.mlflow_artifact_path).rglob(f".old.bin.{sha}.part")
    os.utime(stale, (time.time() - 8 * 86400,) * 2)
    # The server restarted: what it held is still held, and the sweep at its start removed the abandoned part.
    caplog.set_level(logging.INFO, "runstream")
    ml.roles.stop_role("mlflow")
    ml.roles.start_role("mlflow")
    mlflow.set_tracking_uri(ml.url)  # its new port
    wait_until(lambda: "Removed 1 part files of uploads unfinished for 168 h" in caplog.text, 10, "the sweep")
    assert not stale.exists()
    url = artifact_url(ml, run_id, "f.bin")
    assert put(url, token, sha, "*", 3000).json() == {"offset": 1000, "complete": False}
    ahead = put(url, token, sha, "2000-2999", 3000, body[2000:])        # skips bytes the server lacks
    assert ahead.status_code == 409 and ahead.headers["X-Runstream-Upload-Offset"] == "1000"
    assert ahead.json()["error_code"] == "RESOURCE_CONFLICT" and "send from byte 1000" in ahead.json()["message"]
    behind = put(url, token, sha, "0-999", 3000, body[:1000])           # sent twice: not appended twice
    assert behind.status_code == 409 and behind.headers["X-Runstream-Upload-Offset"] == "1000"
    long = put(url, token, sha, "1000-1009", 3000, body[1000:2000])     # more bytes than the range names
    assert long.status_code == 400 and "longer than the 10 bytes" in long.json()["message"]
    for span, total, why in (("5-1", 3000, "not a range of bytes inside"), ("0-3000", 3000, "not a range"),
                             ("x-y", 3000, "is not 'bytes"), ("*", ml.config.mlflow.max_artifact_bytes + 1, "larger than")):
        bad = put(url, token, sha, span, total)
        assert bad.status_code == 400 and why in bad.json()["message"], (span, bad.text)
    no_sha = put(url, token, "", "*", 3000)
    assert no_sha.status_code == 400 and "X-Runstream-Sha256" in no_sha.json()["message"]
    assert put(url, "rs_bogus_token", sha, "*", 3000).status_code == 401
    assert put(url, token, sha, "*", 3000).json() == {"offset": 1000, "complete": False}  # nothing refused was kept
    # The rest, then a digest that does not match: nothing is stored, and the upload starts again from zero.
    done = put(url, token, sha, "1000-2999", 3000, body[1000:])
    assert done.json() == {"offset": 3000, "complete": True}
    assert Path(MlflowClient().download_artifacts(run_id, "f.bin", str(tmp_path))).read_bytes() == body
    wrong = "0" * 64
    put(url.replace("f.bin", "g.bin"), token, wrong, "0-2999", 3000, body)
    assert put(url.replace("f.bin", "g.bin"), token, wrong, "*", 3000).json() == {"offset": 0, "complete": False}
    assert [f.path for f in MlflowClient().list_artifacts(run_id)] == ["f.bin"]


def test_a_new_uploader_goes_on_from_the_bytes_an_earlier_process_sent(ml: MlflowStack, token: str, tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A client that restarted (a new uploader, as in a new process) logging the same file sends only the rest."""
    from runstream.sdk.upload import Upload, Uploader
    run_id, _ = stored_run(ml)
    body = os.urandom(5000)
    (tmp_path / "ckpt.bin").write_bytes(body)
    sha = hashlib.sha256(body).hexdigest()
    url = artifact_url(ml, run_id, "ckpt.bin")
    assert put(url, token, sha, "0-1499", 5000, body[:1500]).json() == {"offset": 1500, "complete": False}
    caplog.set_level(logging.INFO, "runstream")
    failed: list[str] = []
    uploader = Uploader(ml.url, token, part_bytes=1000)
    uploader.start()
    uploader.submit(Upload(MlflowClient().get_run(run_id).info.experiment_id, run_id, tmp_path / "ckpt.bin",
                           "ckpt.bin", sha, 5000, failed.append))
    assert uploader.wait(run_id, 60) and failed == []
    assert "ckpt.bin resumes at byte 1500 of 5000" in caplog.text
    got = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert got.content == body


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=4000),
       sends=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 1500)), min_size=1, max_size=12))
def test_any_sequence_of_parts_keeps_exactly_the_prefix_sent_in_order(ml: MlflowStack, token: str, data: bytes,
                                                                      sends: list[tuple[int, int]]) -> None:
    """Whatever parts arrive in whatever order, the server holds exactly the bytes of the parts that started where
    its bytes ended, answers 200 or 409 (never 5xx), and a file it completes is the file sent."""
    run_id, experiment = stored_run(ml)
    url = artifact_url(ml, run_id, f"p-{uuid.uuid4().hex}.bin", experiment)
    sha, total, held = hashlib.sha256(data).hexdigest(), len(data), 0
    for first, length in sends:
        if held == total:
            break
        first = min(first, total - 1)
        part = data[first:first + length]
        got = put(url, token, sha, f"{first}-{first + len(part) - 1}", total, part)
        if first == held:
            held += len(part)
            assert got.status_code == 200 and got.json() == {"offset": held, "complete": held == total}
        else:
            assert got.status_code == 409 and got.headers["X-Runstream-Upload-Offset"] == str(held)
    assert put(url, token, sha, "*", total).json() == {"offset": held, "complete": held == total}
    if held == total:
        assert requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30).content == data
