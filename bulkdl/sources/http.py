"""The HTTP layer: the only module on the client side that imports aiohttp, and where its errors
are translated into bulkdl's, once.

One :class:`HttpClient` holds one ``aiohttp.ClientSession`` for a run, with explicit timeouts
(connect and a read/stall timeout, no total limit: a long series body must not be cut at
aiohttp's default 5 minutes), a bounded connection pool per host, keep-alive and a
``bulkdl/<version>`` User-Agent. :meth:`HttpClient.request` reads small answers whole (with a size
guard); :meth:`HttpClient.stream` hands out a series body chunk by chunk. Error statuses become
:class:`TransientError` (429/5xx, with Retry-After), :class:`AuthError` (401/403) or
:class:`RejectedError` (other 4xx), each with a short excerpt of the server's text. Headers are
never logged (they may carry ``Authorization``). This module does network I/O.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Final
from urllib.parse import urlencode

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

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body in pieces of at most ``size`` bytes.

        Raises :class:`TransientError` on a stall longer than the read timeout, a reset, or a
        body cut short (chunked stream not terminated, Content-Length not reached).
        """
        while True:
            try:
                chunk = await self._resp.content.read(size)
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
            limit=s.limit, limit_per_host=s.limit_per_host, keepalive_timeout=s.keepalive_timeout
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
        (401/403), :class:`RejectedError` (other 4xx), :class:`ResponseError` (a body larger
        than ``max_body``).
        """
        display = _display(url, params)
        log.debug("%s %s", method, display)
        limit = self.settings.max_body
        try:
            async with self.session.request(
                method,
                url,
                params=dict(params) if params else None,
                data=dict(form) if form is not None else None,
                headers=dict(headers) if headers else None,
            ) as resp:
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
                return HttpResponse(resp.status, dict(resp.headers), b"".join(parts))
        except _NETWORK_ERRORS as exc:
            raise translate(exc, display) from exc

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
        display = _display(url, params)
        log.debug("%s %s (stream)", method, display)
        try:
            resp = await self.session.request(
                method,
                url,
                params=dict(params) if params else None,
                headers=dict(headers) if headers else None,
            )
        except _NETWORK_ERRORS as exc:
            raise translate(exc, display) from exc
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
