"""What a TLS failure tells us about a cancel, against a real TLS far end on loopback.

A certificate refused during the handshake shows no byte of the request left: safe to send
again. A TLS stream that breaks once the request is out (a corrupt record, a fatal alert from a
middlebox) is no answer at all, like a dropped connection: QFPay may have acted on it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
from cancellation.qfpay import Credentials, QFPayAmbiguous, QFPayClient, QFPayUnavailable
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PARAMS = {"syssn": "20261126000101000001", "txamt": "1000", "txdtm": "2026-11-26 11:00:00"}

# A TLS application-data record whose payload cannot be decrypted: the client's read fails.
CORRUPT_RECORD = b"\x17\x03\x03\x00\x20" + b"\x00" * 32


def self_signed(directory: Path) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert, private = directory / "cert.pem", directory / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert), str(private)


class BrokenStream:
    """Reads each request whole, then breaks the TLS stream instead of answering."""

    def __init__(self, cert: str, key: str) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._socket.accept()
            except OSError:
                return
            try:
                connection = self._context.wrap_socket(raw, server_side=True)
                stream = connection.makefile("rb")
                request_line = stream.readline()
                length = 0
                while (header := stream.readline()) not in (b"\r\n", b""):
                    if header.lower().startswith(b"content-length"):
                        length = int(header.split(b":")[1])
                stream.read(length)
                self.requests.append(request_line)
                os.write(connection.fileno(), CORRUPT_RECORD)  # beneath TLS, as a broken record
                connection.close()
            except OSError:
                raw.close()  # a handshake the client refused: nothing was read

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def far_end(tmp_path: Path) -> Iterator[tuple[BrokenStream, str]]:
    cert, key = self_signed(tmp_path)
    server = BrokenStream(cert, key)
    yield server, cert
    server.close()


def client(port: int, trusted: str | None) -> QFPayClient:
    http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=trusted)
    return QFPayClient(f"https://127.0.0.1:{port}", lambda _force: Credentials("APP", "KEY"), http=http)


def test_a_tls_stream_broken_after_the_cancel_left_may_have_taken_effect(
    far_end: tuple[BrokenStream, str],
) -> None:
    server, cert = far_end
    with pytest.raises(QFPayAmbiguous, match="reversal"):
        client(server.port, cert).reversal(PARAMS)
    assert len(server.requests) == 1  # the cancel reached the far end


def test_a_certificate_refused_in_the_handshake_sent_nothing(
    far_end: tuple[BrokenStream, str], tmp_path: Path
) -> None:
    server, _ = far_end
    (tmp_path / "other").mkdir()
    stranger, _ = self_signed(tmp_path / "other")  # a certificate the server does not have
    with pytest.raises(QFPayUnavailable, match="could not connect"):
        client(server.port, stranger).reversal(PARAMS)
    assert server.requests == []
