"""QFPay OpenAPI client: signs, sends over one reused connection pool, and says what a failure means.

Failures are split by what they tell us about QFPay's side:
- ``QFPayUnavailable``: the request certainly did not take effect (no connection was made, our own
  rate limit, QFPay's HTTP 429): safe to send again later. A "try later" respcd is read by the
  caller (``respcd``).
- ``QFPayAmbiguous``: the request may have reached QFPay (read timeout, connection dropped after
  sending, any HTTP status but 200 and 429, an answer that is not JSON): never resend blindly;
  the Transaction Enquiry decides.
- ``CredentialsRejected``: QFPay rejected our signature even after the secret was re-read;
  ``CredentialsUnreadable``, the secret could not be read at all (nothing was sent).
"""

from __future__ import annotations

import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol
from urllib.parse import urlencode

import urllib3
from urllib3.connection import HTTPSConnection
from urllib3.connectionpool import HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError, ReadTimeoutError, SSLError

from cancellation.enquiry_round import current_round
from cancellation.signing import SIGN_TYPES, SignType, response_signature, sign, signed_parameters


class RequestBudget(Protocol):
    """What the client asks before every request and tells after a 429 (cancellation.budget)."""

    def acquire(self, mchid: str | None, app_code: str) -> None: ...

    def throttled(self, mchid: str | None, app_code: str) -> None: ...


REVERSAL_PATH = "/trade/v1/reversal"
CLOSE_PATH = "/trade/v1/close"
ENQUIRY_PATH = "/trade/v1/query"


# The app code travels in a header: a line break in it would end the header (and the error
# http.client raises would quote it). QFPay's app codes are letters and digits.
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")


class Credentials:
    """A merchant's app code and client key, which ``repr`` never shows, and how to sign with them.
    Read-only. A plain class: a dataclass costs every cold start ~1 ms to create (see
    ``cancellation/__init__.py``), and a NamedTuple would give the key away to anything that
    serialises tuples (``json.dumps``, a log record's ``extra``)."""

    __slots__ = ("app_code", "client_key", "sign_type")
    app_code: str
    client_key: str
    sign_type: SignType

    def __init__(self, app_code: str, client_key: str, sign_type: SignType = "MD5") -> None:
        if not isinstance(app_code, str) or not _HEADER_SAFE.fullmatch(app_code):
            raise ValueError("QFPay secret: app_code must be printable ASCII without spaces or line breaks")
        object.__setattr__(self, "app_code", app_code)
        object.__setattr__(self, "client_key", client_key)
        object.__setattr__(self, "sign_type", sign_type)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Credentials are read-only: cannot set {name}")

    def __repr__(self) -> str:
        return f"Credentials(sign_type={self.sign_type!r})"

    @classmethod
    def from_secret(cls, value: Mapping[str, Any]) -> Credentials:
        """From the secret's JSON; errors name the field, never its value."""
        app_code, client_key = value.get("app_code"), value.get("client_key")
        sign_type = value.get("sign_type") or "MD5"
        if not isinstance(app_code, str) or not app_code:
            raise ValueError("QFPay secret: app_code is missing or not a string")
        if not isinstance(client_key, str) or not client_key:
            raise ValueError("QFPay secret: client_key is missing or not a string")
        if sign_type not in SIGN_TYPES:
            raise ValueError(f"QFPay secret: sign_type must be one of {SIGN_TYPES}")
        return cls(app_code=app_code, client_key=client_key, sign_type=sign_type)


# ``force`` asks for a fresh read (after QFPay rejected a signature: the key may have rotated).
CredentialsSource = Callable[[bool], Credentials]


class QFPayError(Exception):
    """Base class; messages never carry credentials."""


class QFPayUnavailable(QFPayError):
    def __init__(self, reason: str, *, respcd: str | None = None, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.respcd = respcd
        self.http_status = http_status


class QFPayAmbiguous(QFPayError):
    pass


class CredentialsRejected(QFPayError):
    pass


class CredentialsUnreadable(CredentialsRejected):
    """The merchant's secret could not be read as credentials (missing, not JSON, its key or
    Secrets Manager refusing): read before any byte of the request, so nothing was sent."""


class AnswerUnreadable(QFPayAmbiguous):
    """QFPay (or whoever answered in its name) answered, in a form we cannot read or trust."""


class EnquiryUnreadable(QFPayUnavailable):
    """An Enquiry was answered but not readably: no answer to act on, though QFPay was reached."""


class ResponseSignatureInvalid(AnswerUnreadable):
    """An answer we cannot trust is no answer: the request may still have taken effect."""


class Timeouts(NamedTuple):
    connect: float = 3.05
    read: float = 10.0  # QFPay documents none; 10 s is what public integrations use


# The longest a loop turn far from its deadline waits for a slot of the merchant's request budget
# (cancellation.budget) before it yields to cancels (scaled with QFPay's windows in local runs).
RATE_LIMIT_MAX_WAIT_SECONDS = 1.0


class _MarkedConnection(HTTPSConnection):
    """Any failure while connecting (TCP or the TLS handshake) comes before a byte of the request
    is sent: raised as NewConnectionError ("could not connect"). urllib3 raises SSLError alike for
    a failed handshake and for a TLS stream that breaks while the answer is read, after sending."""

    def connect(self) -> None:
        try:
            super().connect()
        except NewConnectionError:
            raise
        except Exception as exc:
            raise NewConnectionError(self, f"could not connect ({type(exc).__name__})") from exc


class _MarkedPool(HTTPSConnectionPool):
    ConnectionCls = _MarkedConnection


def new_pool(size: int = 10) -> urllib3.PoolManager:
    """One connection pool per container: connections are reused across orders and invocations.
    urllib3 directly, because botocore already loads it (requests would add its own import to
    every cold start; docs/decisions.md). No automatic retries or redirects: a resent POST could
    cancel twice, so retrying is our decision. TLS certificates are always verified, and a failed
    handshake is told from a failure after sending (:class:`_MarkedConnection`)."""
    pool = urllib3.PoolManager(
        num_pools=2, maxsize=size, block=False, retries=False, cert_reqs="CERT_REQUIRED"
    )
    pool.pool_classes_by_scheme = {**pool.pool_classes_by_scheme, "https": _MarkedPool}
    return pool


class QFPayClient:
    def __init__(
        self,
        base_url: str,
        credentials: CredentialsSource,
        *,
        http: urllib3.PoolManager,
        timeouts: Timeouts = Timeouts(),
        verify_response_signature: bool = False,
        budget: RequestBudget | None = None,
        observe_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._credentials = credentials
        self._http = http
        self._timeouts = timeouts
        self._verify_response_signature = verify_response_signature
        self._budget = budget
        self._observe_latency = observe_latency

    def reversal(
        self, params: Mapping[str, str | None], *, before_send: Callable[[], None] | None = None
    ) -> dict[str, Any]:
        return self.call("POST", REVERSAL_PATH, params, before_send=before_send)

    def close(
        self,
        params: Mapping[str, str | None],
        method: str = "GET",
        *,
        before_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        return self.call(method, CLOSE_PATH, params, before_send=before_send)

    def enquiry(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        """Read-only: an ambiguous failure is as good as no answer, so it is reported as unavailable.
        Within a batch's round (:mod:`~cancellation.enquiry_round`) a query by syssn is asked
        together with the batch's others."""
        shared = current_round.get()
        if shared is not None and shared.shares(params):
            return shared.ask(params, self._enquiry)
        return self._enquiry(params)

    def _enquiry(self, params: Mapping[str, str | None]) -> dict[str, Any]:
        try:
            try:
                return self.call("POST", ENQUIRY_PATH, params)
            except ResponseSignatureInvalid:
                # A key rotated since we cached it fails the answer's signature before its 1108 can
                # be read. Read-only, so asking again with the secret re-read is safe (never a cancel).
                answer = self._send("POST", ENQUIRY_PATH, params, self._read_credentials(True))
                if answer.get("respcd") == "1108":
                    raise CredentialsRejected(
                        f"QFPay rejected the signature on {ENQUIRY_PATH} twice"
                    ) from None
                return answer
        except AnswerUnreadable as exc:
            raise EnquiryUnreadable(f"enquiry: {exc}") from None
        except QFPayAmbiguous as exc:
            raise QFPayUnavailable(f"enquiry: {exc}") from None

    def call(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | None],
        *,
        before_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        """``before_send``: called once, once the merchant's budget let the request go and just
        before its first byte leaves (a cancel is counted there, never while it waits for a slot)."""
        answer = self._send(method, path, params, self._read_credentials(False), before_send)
        if answer.get("respcd") == "1108":
            # The key may have been rotated since we cached it: re-read once, then fail loudly.
            answer = self._send(method, path, params, self._read_credentials(True))
            if answer.get("respcd") == "1108":
                raise CredentialsRejected(f"QFPay rejected the signature on {path} twice (respcd 1108)")
        return answer

    def _read_credentials(self, force: bool) -> Credentials:
        try:
            return self._credentials(force)
        except ValueError as exc:  # Credentials' own checks: they name the field, never its value
            raise CredentialsUnreadable(f"the merchant's secret cannot be used: {exc}") from None
        except Exception as exc:
            # Only the error's type: its text came from the secret's path.
            raise CredentialsUnreadable(
                f"the merchant's secret could not be read as credentials ({type(exc).__name__})"
            ) from None

    def _send(
        self,
        method: str,
        path: str,
        params: Mapping[str, str | None],
        credentials: Credentials,
        before_send: Callable[[], None] | None = None,
    ) -> dict[str, Any]:
        mchid = params.get("mchid") or None
        if self._budget is not None:
            self._budget.acquire(mchid, credentials.app_code)
        sent = signed_parameters(params)  # exactly what is signed is what is sent
        headers = {
            "X-QF-APPCODE": credentials.app_code,
            "X-QF-SIGN": sign(sent, credentials.client_key, credentials.sign_type),
            "X-QF-SIGNTYPE": credentials.sign_type,
        }
        form = urlencode(sent)
        url = self._base_url + path
        timeout = urllib3.Timeout(connect=self._timeouts.connect, read=self._timeouts.read)
        started = time.monotonic()
        body: str | None = None
        if method == "GET":
            url = f"{url}?{form}"
        else:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = form
        if before_send is not None:
            before_send()
        try:
            response = self._http.request(
                method, url, body=body, headers=headers, timeout=timeout, retries=False, redirect=False
            )
        except ConnectTimeoutError:
            # Includes refused connections, unknown hosts and, through new_pool, failed TLS
            # handshakes: no byte of the request was sent.
            raise QFPayUnavailable(f"{path}: could not connect") from None
        except SSLError:
            # Any other TLS failure may come after the request went out (a broken record, an
            # alert in place of the answer): QFPay may have acted on it.
            raise QFPayAmbiguous(f"{path}: TLS failed, possibly after sending") from None
        except ReadTimeoutError:
            raise QFPayAmbiguous(f"{path}: no answer within {self._timeouts.read}s") from None
        except HTTPError as exc:
            # The connection broke after the request went out: QFPay may have acted on it.
            raise QFPayAmbiguous(f"{path}: connection dropped after sending ({type(exc).__name__})") from None
        finally:
            if self._observe_latency is not None:
                self._observe_latency(time.monotonic() - started)
        if response.status == 429 and self._budget is not None:
            self._budget.throttled(mchid, credentials.app_code)  # the whole merchant backs off
        return read_answer(
            path, response, credentials.client_key, verify_signature=self._verify_response_signature
        )


def read_answer(
    path: str, response: urllib3.BaseHTTPResponse, client_key: str, *, verify_signature: bool
) -> dict[str, Any]:
    """QFPay's answer to one request, or why it is none: refused (429), ambiguous (any other
    status but 200), unsigned or wrongly signed (``verify_signature``), or not a JSON object."""
    status = response.status
    if status == 429:
        # QFPay's documented rate limit: refused before anything happened.
        raise QFPayUnavailable(f"{path}: HTTP {status}", http_status=status)
    if status != 200:
        # A gateway's 502/504, a 500, or a status QFPay does not document may come after QFPay
        # acted on the request: nothing proves it did not, so it is no answer at all.
        raise QFPayAmbiguous(f"{path}: HTTP {status}")
    if verify_signature:
        signature = response.headers.get("X-QF-SIGN")
        if signature is None:
            # Anyone on the way can strip a header: an unsigned answer proves nothing.
            raise ResponseSignatureInvalid(f"{path}: answer has no X-QF-SIGN")
        expected = response_signature(response.data, client_key)
        # As bytes: compare_digest refuses str holding anything but ASCII.
        given = signature.upper().encode("utf-8", errors="replace")
        if not hmac.compare_digest(given, expected.encode("ascii")):
            raise ResponseSignatureInvalid(f"{path}: response signature does not match")
    try:
        answer = json.loads(response.data)
    except ValueError:
        raise AnswerUnreadable(f"{path}: answer is not JSON") from None
    if not isinstance(answer, dict):
        raise AnswerUnreadable(f"{path}: answer is not a JSON object")
    return {
        key: (str(value) if key == "respcd" and value is not None else value) for key, value in answer.items()
    }
