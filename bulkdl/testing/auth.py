"""Keycloak-style tokens for the fake server: password and refresh grants, expiry, logout.

Users are a name -> password map (``nbia_guest`` with an empty password by default); lifetimes are
short and configurable so tests can see a token expire. Tokens are random strings kept only in
memory; they are never logged. Pure apart from the clock; thread-safe.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

GUEST_USER = "nbia_guest"


@dataclass(frozen=True, slots=True)
class TokenReply:
    """The token endpoint's answer: an HTTP status and a JSON object."""

    status: int
    body: dict[str, object]


class TokenStore:
    """Issues, refreshes, checks and revokes bearer tokens."""

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        expires_in: float = 300.0,
        refresh_expires_in: float = 1800.0,
    ) -> None:
        self.users = dict(users) if users is not None else {GUEST_USER: ""}
        self.expires_in = expires_in
        self.refresh_expires_in = refresh_expires_in
        self._lock = threading.Lock()
        self._access: dict[str, float] = {}
        self._refresh: dict[str, tuple[str, float]] = {}

    def grant(self, form: Mapping[str, str]) -> TokenReply:
        """Answer a POST to the token endpoint with these form fields."""
        if not form.get("client_id"):
            return _error(400, "invalid_request", "Missing parameter: client_id")
        grant_type = form.get("grant_type", "")
        if grant_type == "password":
            user = form.get("username", "")
            if user not in self.users or self.users[user] != form.get("password", ""):
                return _error(401, "invalid_grant", "Invalid user credentials")
            return self._issue(user)
        if grant_type == "refresh_token":
            now = time.monotonic()
            with self._lock:
                held = self._refresh.pop(form.get("refresh_token", ""), None)
            if held is None or held[1] < now:
                return _error(400, "invalid_grant", "Invalid refresh token")
            return self._issue(held[0])
        return _error(400, "unsupported_grant_type", "Unsupported grant_type")

    def valid(self, token: str) -> bool:
        """True while ``token`` is a live access token."""
        with self._lock:
            expiry = self._access.get(token)
        return expiry is not None and expiry > time.monotonic()

    def revoke(self, token: str) -> None:
        """Log out: the access token stops working."""
        with self._lock:
            self._access.pop(token, None)

    def _issue(self, user: str) -> TokenReply:
        access, refresh = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._access[access] = now + self.expires_in
            self._refresh[refresh] = (user, now + self.refresh_expires_in)
        return TokenReply(
            200,
            {
                "access_token": access,
                "expires_in": int(self.expires_in) if self.expires_in >= 1 else self.expires_in,
                "refresh_expires_in": int(self.refresh_expires_in),
                "refresh_token": refresh,
                "token_type": "bearer",
                "not-before-policy": 0,
                "session_state": str(uuid.uuid4()),
                "scope": "profile email",
            },
        )


def _error(status: int, error: str, description: str) -> TokenReply:
    return TokenReply(status, {"error": error, "error_description": description})
