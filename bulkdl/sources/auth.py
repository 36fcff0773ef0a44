"""Optional token authentication for NBIA's v2 and un-versioned endpoints (v4 needs none).

Credentials come from the environment (``BULKDL_USERNAME``/``BULKDL_PASSWORD``), a credentials
file (``BULKDL_CREDENTIALS_FILE`` or a path the caller gives: ``username=``/``password=`` lines or
a JSON object), or an interactive prompt on a TTY; never from the command line. :class:`TokenAuth`
gets a token with the password grant at ``<origin>/nbia-api/oauth/token``, refreshes it before
``expires_in`` runs out, and re-authenticates when an endpoint answers 401/403. Passwords and
tokens never appear in a repr, a log line or an error message. The loaders read files and the
environment; :class:`TokenAuth` talks to the network through :class:`HttpClient`.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import anyio

from bulkdl.errors import AuthError, InputError, SourceError
from bulkdl.sources.http import HttpClient

log = logging.getLogger(__name__)

ENV_USERNAME: Final = "BULKDL_USERNAME"
ENV_PASSWORD: Final = "BULKDL_PASSWORD"
ENV_CREDENTIALS_FILE: Final = "BULKDL_CREDENTIALS_FILE"
CLIENT_ID: Final = "nbia"
#: Refresh this many seconds before the token expires, so no request carries a dying token.
REFRESH_MARGIN: Final = 30.0


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """A username and password for the token endpoint; the repr hides the password."""

    username: str
    password: str = field(compare=False)
    client_id: str = CLIENT_ID

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


def token_url(base_url: str) -> str:
    """The token endpoint for an API base URL: ``<scheme>://<host>/nbia-api/oauth/token``."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}/nbia-api/oauth/token"


def parse_credentials_text(text: str, source: str = "credentials file") -> Credentials:
    """Credentials from a file's text: a JSON object or ``key=value`` lines (``#`` comments).

    Raises :class:`InputError` naming ``source`` (never the password) if a field is missing.
    """
    values: dict[str, str] = {}
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError as exc:
            raise InputError(f"{source}: not valid JSON") from exc
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a JSON object")
        values = {str(k).lower(): str(v) for k, v in data.items() if v is not None}
    else:
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#") or "=" not in line:
                continue
            key, _, value = line.partition("=")
            values[key.strip().lower()] = value.strip()
    username, password = values.get("username", ""), values.get("password", "")
    if not username or not password:
        raise InputError(f"{source}: needs both username and password")
    return Credentials(username, password, values.get("client_id") or CLIENT_ID)


def read_credentials_file(path: Path) -> Credentials:
    """Read a credentials file, refusing one that others can read and warning if the group can.

    Raises :class:`InputError` if it is missing, unreadable, world-readable or incomplete.
    """
    try:
        mode = path.stat().st_mode
        if mode & stat.S_IROTH:
            raise InputError(f"{path}: credentials file is world-readable; chmod 600 it")
        if mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IWOTH):
            log.warning("credentials file %s is group-accessible; chmod 600 it", path)
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read credentials file ({exc.strerror})") from exc
    return parse_credentials_text(text, str(path))


def load_credentials(
    path: Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    interactive: bool = False,
) -> Credentials | None:
    """Credentials from, in order: ``path``, ``$BULKDL_CREDENTIALS_FILE``, ``$BULKDL_USERNAME`` +
    ``$BULKDL_PASSWORD``, then a prompt if ``interactive`` and stdin is a TTY; else None
    (anonymous). Raises :class:`InputError` for an unusable file."""
    environ = os.environ if env is None else env
    file = path or (
        Path(environ[ENV_CREDENTIALS_FILE]) if environ.get(ENV_CREDENTIALS_FILE) else None
    )
    if file is not None:
        return read_credentials_file(file)
    username, password = environ.get(ENV_USERNAME), environ.get(ENV_PASSWORD)
    if username and password:
        return Credentials(username, password)
    if interactive and sys.stdin.isatty():
        username = username or input("NBIA username: ").strip()
        password = getpass.getpass(f"NBIA password for {username}: ")
        if username and password:
            return Credentials(username, password)
    return None


@dataclass(slots=True, repr=False)
class Token:
    """An access token, when (monotonic seconds) to refresh it, and when it and its refresh
    token expire."""

    access_token: str
    expires_at: float
    refresh_at: float
    refresh_token: str | None = None
    refresh_expires_at: float | None = None

    def __repr__(self) -> str:
        return f"Token(access_token='***', expires_at={self.expires_at:.0f})"


def parse_token_response(body: bytes, now: float, margin: float = REFRESH_MARGIN) -> Token:
    """A Keycloak token answer -> :class:`Token`; raises :class:`AuthError` if it is not one.

    The token is due for refresh ``margin`` seconds before it expires, or half-way through its
    life when that is shorter (a 300 s dev-realm token must not be refreshed on every call).
    """
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise AuthError("token endpoint: answer is not JSON") from exc
    if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
        raise AuthError("token endpoint: answer has no access_token")
    expires_in = _seconds(data.get("expires_in"), 300.0)
    refresh = data.get("refresh_token")
    refresh_in = data.get("refresh_expires_in")
    return Token(
        access_token=data["access_token"],
        expires_at=now + expires_in,
        refresh_at=now + expires_in - min(margin, expires_in / 2),
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        refresh_expires_at=now + _seconds(refresh_in, 0.0) if refresh_in is not None else None,
    )


def _seconds(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and value.strip().isdecimal():
        return float(value.strip())
    return default


class TokenAuth:
    """Bearer tokens for one API host; safe to share between concurrent workers."""

    def __init__(
        self,
        http: HttpClient,
        base_url: str,
        credentials: Credentials,
        *,
        margin: float = REFRESH_MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._url = token_url(base_url)
        self._credentials = credentials
        self._margin = margin
        self._clock = clock
        self._token: Token | None = None
        self._lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"TokenAuth(url={self._url!r}, username={self._credentials.username!r})"

    async def headers(self) -> dict[str, str]:
        """The Authorization header, getting or refreshing the token first if needed.

        Raises :class:`AuthError` if the token endpoint refuses the credentials.
        """
        async with self._lock:
            token = self._token
            now = self._clock()
            if token is None or now >= token.refresh_at:
                token = self._token = await self._obtain(token, now)
        return {"Authorization": f"Bearer {token.access_token}"}

    async def reauthenticate(self, rejected: str | None = None) -> None:
        """Forget the token that an endpoint refused (401/403) and get a new one with the password.

        ``rejected`` is the access token that was refused: if another worker already replaced
        it, nothing is done.
        """
        async with self._lock:
            if self._token is not None and rejected not in (None, self._token.access_token):
                return
            self._token = await self._password_grant(self._clock())

    async def _obtain(self, old: Token | None, now: float) -> Token:
        if (
            old is not None
            and old.refresh_token
            and (old.refresh_expires_at is None or now < old.refresh_expires_at - self._margin)
        ):
            try:
                token = await self._post(
                    {
                        "grant_type": "refresh_token",
                        "refresh_token": old.refresh_token,
                        "client_id": self._credentials.client_id,
                    },
                    now,
                )
                log.debug("refreshed the access token")
                return token
            except AuthError:
                log.info("token refresh refused; signing in again")
        return await self._password_grant(now)

    async def _password_grant(self, now: float) -> Token:
        c = self._credentials
        token = await self._post(
            {
                "username": c.username,
                "password": c.password,
                "client_id": c.client_id,
                "grant_type": "password",
            },
            now,
        )
        log.debug("signed in to %s as %s", self._url, c.username)
        return token

    async def _post(self, form: dict[str, str], now: float) -> Token:
        try:
            resp = await self._http.request("POST", self._url, form=form)
        except SourceError as exc:
            # Keycloak answers 400/401 for bad credentials; retryable faults stay what they are.
            # Our own words, not the server's body: nothing a server echoes reaches the user.
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                raise AuthError(
                    f"token endpoint refused the credentials (HTTP {exc.status}) for user "
                    f"{self._credentials.username!r} at {self._url}: check BULKDL_USERNAME and "
                    "BULKDL_PASSWORD, or the file BULKDL_CREDENTIALS_FILE names",
                    url=self._url,
                    status=exc.status,
                ) from None
            raise
        return parse_token_response(resp.body, now, self._margin)
