"""A stand-in for the QFPay client's connection pool, at the HTTP boundary: it records each request
exactly as it would go on the wire and answers with a canned response."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import urllib3


@dataclass(frozen=True)
class SentRequest:
    method: str
    url: str
    body: str | None
    headers: dict[str, str]

    def parameters(self) -> dict[str, str]:
        """What a server decodes from the request: the query string plus a form body."""
        pairs = urllib.parse.parse_qsl(urllib.parse.urlsplit(self.url).query, keep_blank_values=True)
        if self.body:
            pairs += urllib.parse.parse_qsl(self.body, keep_blank_values=True)
        received = dict(pairs)
        assert len(received) == len(pairs), "no parameter is sent twice"
        return received


@dataclass
class CannedPool:
    body: bytes = b'{"respcd": "0000", "resperr": "success"}'
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200
    sent: list[SentRequest] = field(default_factory=list)

    def request(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, **_: Any
    ) -> urllib3.HTTPResponse:
        text = body.decode("ascii") if isinstance(body, bytes) else body
        self.sent.append(SentRequest(method, url, text, dict(headers or {})))
        return urllib3.HTTPResponse(
            body=self.body, headers={"Content-Type": "application/json", **self.headers}, status=self.status
        )
