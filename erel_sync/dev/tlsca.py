"""A certificate authority of a test's or demo's own, and a RabbitMQ amqps listener using it.

`make_ca(dir)` writes a CA, a server certificate for `localhost` (the name clients connect
to, so hostname verification is exercised: connecting by `127.0.0.1` fails it) and a client
certificate, all PEM, keys 0600. Through `cryptography`, never a hand-rolled format.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from erel_sync.adapters import store


@dataclass(frozen=True)
class TlsListener:
    """An amqps listener beside the plain one: the node's certificate and key, and the CA its
    clients' certificates must chain to (a client without one is refused)."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def config(self, host: str, port: int) -> list[str]:
        """rabbitmq.conf lines for it."""
        return [
            f"listeners.ssl.1 = {host}:{port}",
            f"ssl_options.cacertfile = {self.ca_file}",
            f"ssl_options.certfile = {self.cert_file}",
            f"ssl_options.keyfile = {self.key_file}",
            "ssl_options.verify = verify_peer",
            "ssl_options.fail_if_no_peer_cert = true",
        ]


@dataclass(frozen=True)
class LocalCa:
    ca_file: Path
    server: TlsListener
    client_cert: Path
    client_key: Path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Path:
    store.write_atomic(
        path.with_suffix(".key"),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    store.write_atomic(path.with_suffix(".pem"), cert.public_bytes(serialization.Encoding.PEM))
    return path.with_suffix(".pem")


def make_ca(where: Path, server_name: str = "localhost") -> LocalCa:
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("erel-sync test CA"))
        .issuer_name(_name("erel-sync test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    ca_file = _write(where / "ca", ca_key, ca)

    def leaf(common: str, usage: x509.ObjectIdentifier, dns: list[str]) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if dns:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
            )
        pem = _write(where / common, key, builder.sign(ca_key, hashes.SHA256()))
        return pem, pem.with_suffix(".key")

    server_cert, server_key = leaf(server_name, ExtendedKeyUsageOID.SERVER_AUTH, [server_name])
    client_cert, client_key = leaf("erel-client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
    return LocalCa(ca_file, TlsListener(ca_file, server_cert, server_key), client_cert, client_key)
