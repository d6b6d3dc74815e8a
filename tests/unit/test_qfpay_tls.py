"""What a TLS failure tells us about a cancel, against a real TLS far end on loopback, through
the functions' own connection pool.

A failure before the handshake ends (a certificate refused, no TLS on the port, the connection
closed) shows no byte of the request left: safe to send again. A TLS stream that breaks once the
request is out (a corrupt record, a fatal alert from a middlebox) is no answer at all, like a
dropped connection: QFPay may have acted on it. urllib3 raises SSLError for both.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cancellation.qfpay import Credentials, QFPayAmbiguous, QFPayClient, QFPayUnavailable, new_pool
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


class FarEnd:
    """QFPay's side over TLS. ``mode``: ``broken_stream`` reads each request whole, then breaks
    the TLS stream instead of answering; ``plain_http`` answers in plain HTTP, no handshake;
    ``closed`` closes every connection at once."""

    def __init__(self, cert: str, key: str, mode: str) -> None:
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(cert, key)
        self._mode = mode
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
                if self._mode == "closed":
                    raw.close()
                elif self._mode == "plain_http":
                    raw.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    raw.close()
                else:
                    self._break_after_reading(self._context.wrap_socket(raw, server_side=True))
            except OSError:
                raw.close()  # a handshake the client refused: nothing was read

    def _break_after_reading(self, connection: ssl.SSLSocket) -> None:
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

    def close(self) -> None:
        self._socket.close()


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[str, str]:
    return self_signed(tmp_path)


def far_end(certificate: tuple[str, str], mode: str) -> FarEnd:
    return FarEnd(*certificate, mode)


def client(port: int, trusted: str, monkeypatch: pytest.MonkeyPatch) -> QFPayClient:
    """The functions' own pool (new_pool), trusting ``trusted`` as the system's CA store."""
    monkeypatch.setenv("SSL_CERT_FILE", trusted)
    return QFPayClient(f"https://127.0.0.1:{port}", lambda _force: Credentials("APP", "KEY"), http=new_pool())


def test_a_tls_stream_broken_after_the_cancel_left_may_have_taken_effect(
    certificate: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = far_end(certificate, "broken_stream")
    with pytest.raises(QFPayAmbiguous, match="reversal"):
        client(server.port, certificate[0], monkeypatch).reversal(PARAMS)
    server.close()
    assert len(server.requests) == 1  # the cancel reached the far end


@pytest.mark.parametrize("mode", ["broken_stream", "plain_http", "closed"])
def test_a_handshake_that_fails_sent_nothing(
    certificate: tuple[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A certificate the client does not trust, plain HTTP on the TLS port, a connection closed
    at once: every failure before the handshake ends is "could not connect", retried by time."""
    server = far_end(certificate, mode)
    trusted = certificate[0]
    if mode == "broken_stream":
        (tmp_path / "other").mkdir()
        trusted, _ = self_signed(tmp_path / "other")  # not the certificate the server presents
    with pytest.raises(QFPayUnavailable, match="could not connect"):
        client(server.port, trusted, monkeypatch).reversal(PARAMS)
    server.close()
    assert server.requests == []
