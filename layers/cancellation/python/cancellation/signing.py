"""QFPay request signing, exactly as QFPay documents it.

Every parameter actually sent with a non-empty value, sorted by name (byte order), joined as
``name=value`` with ``&``, the client_key appended with no separator, hashed (MD5 or SHA-256) over
the UTF-8 bytes, upper-case hex. Values are signed raw, before URL encoding.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Literal

SignType = Literal["MD5", "SHA256"]
SIGN_TYPES: tuple[SignType, ...] = ("MD5", "SHA256")


def signed_parameters(params: Mapping[str, str | None]) -> dict[str, str]:
    """The parameters that are sent and signed: empty and missing values are left out."""
    return {name: value for name, value in params.items() if value not in (None, "")}


def signing_string(params: Mapping[str, str | None]) -> str:
    sent = signed_parameters(params)
    # Byte order, not locale order: sort on the UTF-8 encoding of each name.
    names = sorted(sent, key=lambda name: name.encode("utf-8"))
    return "&".join(f"{name}={sent[name]}" for name in names)


def sign(params: Mapping[str, str | None], client_key: str, sign_type: SignType = "MD5") -> str:
    """The ``X-QF-SIGN`` header value for a request carrying ``params``."""
    payload = (signing_string(params) + client_key).encode("utf-8")
    digest = hashlib.sha256(payload) if sign_type == "SHA256" else hashlib.md5(payload)  # noqa: S324 - QFPay's protocol
    return digest.hexdigest().upper()


def response_signature(body: bytes, client_key: str) -> str:
    """QFPay's response ``X-QF-SIGN``: MD5 of the raw body followed by the client_key."""
    return hashlib.md5(body + client_key.encode("utf-8")).hexdigest().upper()  # noqa: S324 - QFPay's protocol
