"""Certificates for a deployment that has none yet: a private CA and a server certificate signed by it
(`runstream tls init DIR --host ingest`). Keys are written 0600 from their first byte; clients trust ca.pem."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from runstream.wire.files import private_dir, write_private


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def init(directory: Path, hosts: list[str], *, days: int = 825, clients: tuple[str, ...] = ()) -> dict[str, Path]:
    """Write ca.pem, ca.key, server.pem, server.key and server-bundle.pem (key + chain) for ``hosts`` (names or IPs) into ``directory``; an
    existing CA is reused, so clients that trust it keep working when the server certificate is renewed."""
    private_dir(directory)
    now = dt.datetime.now(dt.UTC)
    ca_key_path, ca_path = directory / "ca.key", directory / "ca.pem"
    if ca_key_path.exists() and ca_path.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca = x509.load_pem_x509_certificate(ca_path.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(_name("runstream CA")).issuer_name(_name("runstream CA"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=3650))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        write_private(ca_key_path, ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for h in hosts:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            alt.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    write_private(directory / "server.key", key_pem)
    (directory / "server.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # Key and chain in one file: the PEM keystore Kafka reads (ssl.keystore.type=PEM) for its SASL_SSL listener.
    write_private(directory / "server-bundle.pem", key_pem + cert.public_bytes(serialization.Encoding.PEM)
                  + ca.public_bytes(serialization.Encoding.PEM))
    out = {"ca": ca_path, "cert": directory / "server.pem", "key": directory / "server.key",
           "bundle": directory / "server-bundle.pem"}
    for name in clients:  # client certificates: how a scraper (e.g. Prometheus) authenticates to /metrics
        ckey = ec.generate_private_key(ec.SECP256R1())
        ccert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(ca.subject)
                 .public_key(ckey.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                 .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                 .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        write_private(directory / f"{name}.key", ckey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                                    serialization.NoEncryption()))
        (directory / f"{name}.pem").write_bytes(ccert.public_bytes(serialization.Encoding.PEM))
        out[f"client:{name}"] = directory / f"{name}.pem"
    return out
