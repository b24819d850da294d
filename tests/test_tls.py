"""TLS on the ingest port: a client without the CA is refused; with it, logging works; with client
certificates required, a client without one is refused and one with a certificate from the CA works.
Certificates are made with openssl for the test."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

import runstream
from runstream.ops import tls
from runstream.ops.broker import KafkaBroker, free_port
from runstream.ops.stack import InProcessRoles
from runstream.sdk.transport import GrpcTransport, SendError, tls_credentials
from runstream.server import telemetry
from runstream.server.auth import ensure_dev_token
from runstream.wire.config import RunstreamConfig
from tests.conftest import Stack
from tests.helpers import metric_batch as _batch
from tests.helpers import wait_until
from tests.test_cli import env_for


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=runstream-test-ca", cwd=d)
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1,DNS:localhost"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=d)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "other.key", "-out", "other.pem", "-days", "2",
            "-subj", "/CN=someone-else", cwd=d)
    return d


def tls_stack(config: RunstreamConfig, pki: Path, client_ca: bool) -> InProcessRoles:
    config.ingest.tls_cert = str(pki / "server.pem")
    config.ingest.tls_key = str(pki / "server.key")
    config.ingest.tls_client_ca = str(pki / "ca.pem") if client_ca else ""
    config.validate()
    return InProcessRoles(config, ["ingest", "sink"]).start()


@pytest.mark.slow
def test_tls_needs_the_ca(config: RunstreamConfig, pki: Path, tmp_path: Path) -> None:
    token = ensure_dev_token(config.tokens_path)
    roles = tls_stack(config, pki, client_ca=False)
    stack = Stack(config, roles)
    try:
        plain = GrpcTransport(stack.ingest_addr, token, timeout_s=5)
        with pytest.raises(SendError) as exc:
            plain.send([_batch("tls-plain")])
        assert exc.value.code == "UNAVAILABLE"
        wrong = GrpcTransport(stack.ingest_addr, token, timeout_s=5, credentials=tls_credentials(str(pki / "other.pem")))
        with pytest.raises(SendError):
            wrong.send([_batch("tls-wrong-ca")])
        good = GrpcTransport(stack.ingest_addr, token, credentials=tls_credentials(str(pki / "ca.pem")))
        run = runstream.init("tls", transport=good, spool_dir=str(tmp_path))
        for i in range(500):
            run.log({"x": float(i)}, step=i)
        assert run.finish(timeout=30)
        assert stack.wait_points(500, where="project = 'tls'") == 500
    finally:
        roles.stop()


@pytest.mark.slow
def test_client_certificates_when_required(config: RunstreamConfig, pki: Path) -> None:
    token = ensure_dev_token(config.tokens_path)
    roles = tls_stack(config, pki, client_ca=True)
    stack = Stack(config, roles)
    try:
        no_cert = GrpcTransport(stack.ingest_addr, token, timeout_s=5, credentials=tls_credentials(str(pki / "ca.pem")))
        with pytest.raises(SendError):
            no_cert.send([_batch("mtls-none")])
        with_cert = GrpcTransport(stack.ingest_addr, token, credentials=tls_credentials(
            str(pki / "ca.pem"), str(pki / "client.pem"), str(pki / "client.key")))
        with_cert.send([_batch("mtls-ok")])
        assert stack.wait_points(10, where="run_id = 'mtls-ok'") == 10
    finally:
        roles.stop()


@pytest.mark.slow
def test_up_with_tls_in_the_config_file_serves_tls_only(tmp_path: Path, kafka: KafkaBroker | str, pki: Path) -> None:
    """`runstream up --config f.yaml`: the file's TLS settings reach the ingest child (they used to be dropped, and
    ingest served plaintext). The SDK finds the CA through its own config (client.tls_ca) too."""
    env = env_for(tmp_path, kafka)
    conf = {"ingest": {"tls_cert": str(pki / "server.pem"), "tls_key": str(pki / "server.key")}}
    (tmp_path / "f.yaml").write_text(yaml.safe_dump(conf))
    up = subprocess.Popen([sys.executable, "-m", "runstream", "up", "--config", str(tmp_path / "f.yaml")], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stack_file = tmp_path / "home" / "stack.json"
    try:
        wait_until(lambda: stack_file.exists() or up.poll() is not None, 120, "stack.json")
        assert up.poll() is None, up.stdout.read() if up.stdout else ""
        info = json.loads(stack_file.read_text())
        child = yaml.safe_load((tmp_path / "home" / "run" / "ingest-0.yaml").read_text())
        assert child["ingest"]["tls_cert"] == str(pki / "server.pem")
        assert os.stat(tmp_path / "home" / "run" / "ingest-0.yaml").st_mode & 0o077 == 0
        with pytest.raises(SendError) as exc:
            GrpcTransport(info["ingest"], info["token"], timeout_s=5).send([_batch("up-plain")])
        assert exc.value.code == "UNAVAILABLE"  # a plaintext client gets no answer from a TLS port
        script = ("import runstream\n"
                  "run = runstream.init(project='tlsup')\n"
                  "run.log({'x': 1.0}, step=0)\n"
                  "assert run.finish(timeout=30)\n"
                  "print(run.stats.acked_points)\n")
        res = subprocess.run([sys.executable, "-c", script], env=dict(env, RUNSTREAM_TLS_CA=str(pki / "ca.pem")),
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.strip() == "1", res.stderr
    finally:
        up.send_signal(signal.SIGTERM)
        up.communicate(timeout=90)


def test_tls_init_makes_what_ingest_and_clients_need(config: RunstreamConfig, tmp_path: Path) -> None:
    """`runstream tls init`: a CA and a server certificate; ingest serves with them and a client trusting the CA
    logs through; keys are 0600 and a second run keeps the CA (clients keep trusting it)."""
    res = subprocess.run([sys.executable, "-m", "runstream", "tls", "init", str(tmp_path / "certs"), "--host", "127.0.0.1"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    certs = tmp_path / "certs"
    assert all(os.stat(certs / k).st_mode & 0o077 == 0 for k in ("ca.key", "server.key"))
    ca_before = (certs / "ca.pem").read_bytes()
    token = ensure_dev_token(config.tokens_path)
    config.ingest.tls_cert, config.ingest.tls_key = str(certs / "server.pem"), str(certs / "server.key")
    roles = InProcessRoles(config, ["ingest", "sink"]).start()
    stack = Stack(config, roles)
    try:
        GrpcTransport(stack.ingest_addr, token, credentials=tls_credentials(str(certs / "ca.pem"))).send([_batch("tls-init")])
        assert stack.wait_points(10, where="run_id = 'tls-init'") == 10
    finally:
        roles.stop()
    subprocess.run([sys.executable, "-m", "runstream", "tls", "init", str(certs), "--host", "127.0.0.1"], check=True,
                   capture_output=True, timeout=60)
    assert (certs / "ca.pem").read_bytes() == ca_before


def test_metrics_beyond_loopback_serve_https_to_scrapers_with_a_client_certificate(tmp_path: Path) -> None:
    """/metrics with metrics_tls_*: a scraper with the CA-signed client certificate reads it; plain HTTP, and
    HTTPS without a client certificate, are refused."""
    certs = tmp_path / "certs"
    tls.init(certs, ["127.0.0.1"], clients=("prometheus",))
    assert os.stat(certs / "prometheus.key").st_mode & 0o077 == 0
    config = RunstreamConfig.load(None, env={
        "RUNSTREAM_METRICS_HOST": "0.0.0.0", "RUNSTREAM_METRICS_TLS_CERT": str(certs / "server.pem"),
        "RUNSTREAM_METRICS_TLS_KEY": str(certs / "server.key"), "RUNSTREAM_METRICS_TLS_CLIENT_CA": str(certs / "ca.pem")})
    port = free_port()
    telemetry.serve_metrics(port, config)
    url = f"https://127.0.0.1:{port}/metrics"
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    ctx.load_cert_chain(str(certs / "prometheus.pem"), str(certs / "prometheus.key"))
    body = urllib.request.urlopen(url, context=ctx, timeout=10).read().decode()
    assert "runstream_ingest_requests_total" in body
    bare = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(url, context=bare, timeout=10).read()
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
