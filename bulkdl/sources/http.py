"""The HTTP layer: the only module on the client side that imports aiohttp, and where its errors
are translated into bulkdl's, once.

One :class:`HttpClient` holds one ``aiohttp.ClientSession`` for a run, with explicit timeouts
(connect and a read/stall timeout, no total limit: a long series body must not be cut at
aiohttp's default 5 minutes), a bounded connection pool per host, keep-alive and a
``bulkdl/<version>`` User-Agent. :meth:`HttpClient.request` reads small answers whole (with a size
guard); :meth:`HttpClient.stream` hands out a series body chunk by chunk. Error statuses become
:class:`TransientError` (429/5xx, with Retry-After), :class:`AuthError` (401/403) or
:class:`RejectedError` (other 4xx), each with a short excerpt of the server's text. Headers are
never logged (they may carry ``Authorization``).

TLS certificates are always verified unless :attr:`HttpSettings.verify` is False (``--insecure``);
``ca_bundle`` replaces the trusted CAs (a site's TLS-inspecting proxy) without turning
verification off. A certificate failure is not retried: it becomes one :class:`SourceError`
naming the problem. Redirects are followed here, not by aiohttp, so that the rules are ours: at
most ``max_redirects`` hops, never from https to http, never to a URL carrying credentials, the
``Authorization`` header dropped as soon as a hop leaves the original origin, and a request body
(the token form, with the password) never re-sent to another origin. This module does network I/O.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from bulkdl import __version__
from bulkdl.errors import (
    AuthError,
    InputError,
    RejectedError,
    ResponseError,
    SourceError,
    TransientError,
)
from bulkdl.retry import is_retryable_status, parse_retry_after
from bulkdl.sources.nbia import endpoint_of

log = logging.getLogger(__name__)

USER_AGENT: Final = f"bulkdl/{__version__}"
MAX_BODY: Final = 256 * 1024 * 1024
_EXCERPT_BYTES: Final = 2048
_EXCERPT_CHARS: Final = 200
#: Redirect hops followed before giving up; NBIA itself never redirects, a proxy or a moved
#: host may once or twice.
MAX_REDIRECTS: Final = 5
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
FORM_TYPE: Final = "application/x-www-form-urlencoded"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A small response read whole."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @property
    def content_type(self) -> str | None:
        """The Content-Type header, if any."""
        return self.headers.get("Content-Type")


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Connection settings of one run. ``read_timeout`` is the longest silence tolerated while
    waiting for or reading a body; there is deliberately no total timeout."""

    connect_timeout: float = 30.0
    read_timeout: float = 120.0
    limit_per_host: int = 8
    limit: int = 64
    keepalive_timeout: float = 30.0
    max_body: int = MAX_BODY
    user_agent: str = USER_AGENT
    #: False (``--insecure``) accepts any certificate: a last resort, warned about by callers.
    verify: bool = True
    #: PEM file of CA certificates trusted *instead of* the system's (as curl's ``--cacert``).
    ca_bundle: Path | None = None
    max_redirects: int = MAX_REDIRECTS


def ssl_context(settings: HttpSettings) -> ssl.SSLContext | bool:
    """The connector's TLS setting: False when verification is off; True (aiohttp's own verifying
    context: the system's CAs, which honour ``SSL_CERT_FILE``/``SSL_CERT_DIR``) without a
    ``ca_bundle``, since building another such context costs every run ~25 ms of start-up
    reading the system's CA file; else a verifying context trusting ``ca_bundle`` alone.

    Raises :class:`InputError` naming the file if ``ca_bundle`` cannot be read as PEM certificates.
    """
    if not settings.verify:
        return False
    if settings.ca_bundle is None:
        return True
    cafile = str(settings.ca_bundle)
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise InputError(f"{cafile}: cannot use as a CA bundle ({why})") from exc
    # create_default_context verifies already; say so, so no later edit can quietly drop it.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@dataclass(frozen=True, slots=True)
class Redirect:
    """Where one redirect hop goes and how the request changes for it."""

    url: str
    method: str
    keep_body: bool
    same_origin: bool


def redact_url(url: str) -> str:
    """``url`` without any ``user:password@``, for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme)


def follow_redirect(
    current: str, status: int, location: str | None, method: str, has_body: bool, origin: str
) -> Redirect:
    """The next hop for a redirect ``status`` from ``current`` to ``location``. Pure.

    ``origin`` is the URL the request was first sent to: a hop that leaves its origin loses the
    ``Authorization`` header (see :class:`Redirect`). 303 (and 301/302 after a POST) becomes a
    GET without body, as browsers do; 307/308 keep both. Raises :class:`RejectedError` for a
    redirect without Location, to a non-http(s) URL, from https to http, to a URL with
    ``user:password@``, or one that would re-send a request body to another origin.
    """
    shown = redact_url(current)
    if not location or not location.strip():
        raise RejectedError(f"{endpoint_of(current)}: HTTP {status} without Location", url=shown)
    target = urljoin(current, location.strip())
    parts = urlsplit(target)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise RejectedError(
            f"refused redirect from {shown} to {redact_url(target)!r}: not an http(s) URL",
            url=shown,
        )
    if urlsplit(current).scheme.lower() == "https" and parts.scheme.lower() == "http":
        raise RejectedError(
            f"refused redirect from {shown} to {redact_url(target)}: it would leave HTTPS "
            "for plain HTTP",
            url=shown,
        )
    if parts.username is not None or parts.password is not None:
        raise RejectedError(
            f"refused redirect from {shown} to {redact_url(target)}: the target carries "
            "credentials",
            url=shown,
        )
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, keep_body = "GET", False
    else:
        keep_body = has_body
    same_origin = _origin(target) == _origin(origin)
    if keep_body and not same_origin:
        raise RejectedError(
            f"refused redirect from {shown} to {redact_url(target)}: it would re-send the "
            "request body to another host",
            url=shown,
        )
    return Redirect(target, method, keep_body, same_origin)


def form_body(form: Mapping[str, str]) -> bytes:
    """``form`` as an ``application/x-www-form-urlencoded`` body, commas left as they are.

    A comma needs no escaping in a form body, and leaving it makes the encoding of a
    getSeriesMetadata list (thousands of UIDs: digits, dots and commas) one pass in C, where
    aiohttp's own encoding escapes character by character. Pure.
    """
    return urlencode(form, safe=",").encode("ascii")


def _display(url: str, params: Mapping[str, str] | None) -> str:
    return f"{url}?{urlencode(dict(params))}" if params else url


def _excerpt(body: bytes) -> str:
    text = " ".join(body[:_EXCERPT_BYTES].decode("utf-8", "replace").split())
    return text[:_EXCERPT_CHARS] + ("..." if len(text) > _EXCERPT_CHARS else "")


def status_error(
    status: int, reason: str | None, headers: Mapping[str, str], body: bytes, url: str
) -> SourceError:
    """The error for an HTTP error status: 429/5xx -> TransientError (with Retry-After),
    401/403 -> AuthError, other 4xx -> RejectedError. Pure."""
    excerpt = _excerpt(body)
    what = f"{endpoint_of(url)}: HTTP {status} {reason or ''}".rstrip()
    message = f"{what}: {excerpt}" if excerpt else what
    if is_retryable_status(status):
        retry_after = parse_retry_after(headers.get("Retry-After"))
        return TransientError(message, url=url, status=status, retry_after=retry_after)
    if status in (401, 403):
        return AuthError(message, url=url, status=status)
    return RejectedError(message, url=url, status=status)


def translate(exc: BaseException, url: str) -> SourceError | InputError:
    """An aiohttp/asyncio/OS exception -> bulkdl's error for it (the caller raises it ``from``)."""
    if isinstance(exc, aiohttp.InvalidURL):
        return InputError(f"invalid URL: {url}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return RejectedError(f"{endpoint_of(url)}: too many redirects", url=url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        # Not transient: the same certificate comes back on every retry. One line, no advice
        # to turn verification off first: a private CA is the usual cause on managed networks.
        error = getattr(exc, "certificate_error", exc)
        why = getattr(error, "verify_message", None) or getattr(error, "reason", None) or str(error)
        parts = urlsplit(url)
        return SourceError(
            f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}: TLS certificate verification "
            f"failed ({why}); to trust a private or proxy CA give its PEM file with "
            "--ca-bundle FILE (or BULKDL_CA_BUNDLE)",
            url=url,
        )
    if isinstance(exc, TimeoutError):
        kind = "timed out"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        kind = "server disconnected"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        kind = "body cut short"
    elif isinstance(exc, aiohttp.ClientConnectorError):
        kind = "cannot connect"
    elif isinstance(exc, ConnectionResetError):
        kind = "connection reset"
    else:
        kind = "connection failed"
    detail = str(exc) or type(exc).__name__
    return TransientError(f"{endpoint_of(url)}: {kind} ({detail})", url=url)


_NETWORK_ERRORS: Final = (aiohttp.ClientError, OSError, asyncio.TimeoutError)


class StreamResponse:
    """A response whose body is read in chunks; see :meth:`HttpClient.stream`."""

    __slots__ = ("_resp", "url")

    def __init__(self, resp: aiohttp.ClientResponse, url: str) -> None:
        self._resp = resp
        self.url = url

    @property
    def status(self) -> int:
        """The HTTP status (always 2xx: errors were raised when the stream opened)."""
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive)."""
        return self._resp.headers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: what aiohttp holds at each read (a few hundred KiB at most:
        it stops reading the socket past its buffer's high-water mark). Asking for a size would
        make aiohttp join its pieces into one more copy of every byte (loopback benchmark,
        2026-12-06: 2.243 s against 2.287 s, faster in 9 of 12 interleaved rounds).

        Raises :class:`TransientError` on a stall longer than the read timeout, a reset, or a
        body cut short (chunked stream not terminated, Content-Length not reached).
        """
        while True:
            try:
                chunk = await self._resp.content.readany()
            except _NETWORK_ERRORS as exc:
                raise translate(exc, self.url) from exc
            if not chunk:
                return
            yield chunk


class HttpClient:
    """One aiohttp session for a run; use as ``async with HttpClient() as http:``."""

    def __init__(self, settings: HttpSettings | None = None) -> None:
        self.settings = settings or HttpSettings()
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        s = self.settings
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=s.connect_timeout,
            sock_connect=s.connect_timeout,
            sock_read=s.read_timeout,
        )
        connector = aiohttp.TCPConnector(
            limit=s.limit,
            limit_per_host=s.limit_per_host,
            keepalive_timeout=s.keepalive_timeout,
            ssl=ssl_context(s),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=timeout,
            headers={"User-Agent": s.user_agent},
            raise_for_status=False,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session; raises RuntimeError outside ``async with``."""
        if self._session is None:
            raise RuntimeError("HttpClient is not open: use 'async with HttpClient() as http'")
        return self._session

    async def _send(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        form: Mapping[str, str] | None,
        headers: Mapping[str, str] | None,
    ) -> tuple[aiohttp.ClientResponse, str]:
        """Send, following redirects by :func:`follow_redirect`'s rules; returns the final
        response (any status but a redirect) and the URL it answered, for messages."""
        display = first = _display(url, params)
        sent = dict(headers) if headers else {}
        data = form_body(form) if form is not None else None
        query = dict(params) if params else None
        for _ in range(self.settings.max_redirects + 1):
            typed = {**sent, "Content-Type": FORM_TYPE} if data is not None else sent
            try:
                resp = await self.session.request(
                    method,
                    url,
                    params=query,
                    data=data,
                    headers=typed or None,
                    allow_redirects=False,
                )
            except _NETWORK_ERRORS as exc:
                raise translate(exc, display) from exc
            if resp.status not in REDIRECT_STATUSES:
                return resp, display
            location = resp.headers.get("Location")
            resp.release()
            hop = follow_redirect(display, resp.status, location, method, data is not None, first)
            log.debug("HTTP %d: %s redirected to %s", resp.status, display, redact_url(hop.url))
            if not hop.same_origin:
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            url = display = hop.url
            method, query = hop.method, None
            data = data if hop.keep_body else None
        raise RejectedError(
            f"{endpoint_of(display)}: more than {self.settings.max_redirects} redirects "
            f"(last to {redact_url(display)})",
            url=redact_url(display),
        )

    async def request(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send a request and read the whole (small) answer.

        Raises :class:`TransientError` (network failure, timeout, 429/5xx), :class:`AuthError`
        (401/403), :class:`RejectedError` (other 4xx, a refused redirect), :class:`SourceError`
        (a TLS certificate that does not verify), :class:`ResponseError` (a body larger than
        ``max_body``).
        """
        log.debug("%s %s", method, _display(url, params))
        limit = self.settings.max_body
        resp, display = await self._send(method, url, params, form, headers)
        try:
            if resp.status >= 400:
                body = await resp.content.read(_EXCERPT_BYTES)
                raise status_error(resp.status, resp.reason, resp.headers, body, display)
            if resp.content_length is not None and resp.content_length > limit:
                raise _too_big(display, limit)
            parts: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise _too_big(display, limit)
                parts.append(chunk)
            answer = HttpResponse(resp.status, dict(resp.headers), b"".join(parts))
        except _NETWORK_ERRORS as exc:
            resp.close()
            raise translate(exc, display) from exc
        except BaseException:
            resp.close()  # a body left unread: drop the connection rather than drain it
            raise
        resp.release()
        return answer

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[StreamResponse]:
        """Open a request whose body is read with ``StreamResponse.chunks``.

        Raises on opening as :meth:`request` does; errors raised by the caller's block pass
        through untranslated (a disk error is not a network error).
        """
        log.debug("%s %s (stream)", method, _display(url, params))
        resp, display = await self._send(method, url, params, None, headers)
        ok = False
        try:
            if resp.status >= 400:
                try:
                    body = await resp.content.read(_EXCERPT_BYTES)
                except _NETWORK_ERRORS:
                    body = b""
                raise status_error(resp.status, resp.reason, resp.headers, body, display)
            yield StreamResponse(resp, display)
            ok = True
        finally:
            if ok:
                resp.release()
            else:
                resp.close()


def _too_big(url: str, limit: int) -> ResponseError:
    return ResponseError(
        f"{endpoint_of(url)}: answer larger than {limit} bytes", url=url, status=200
    )
