"""Retry policy, sans I/O: what is worth retrying, how long to wait, and per-host backoff state.

Pure functions and small state objects; nothing here sleeps or reads the clock on its own. The
async layer asks :class:`RetryPolicy` how long to wait before the next attempt, honours the
server's ``Retry-After``, and asks the :class:`HostBackoff` shared by every worker on one host how
long to hold off before sending anything there (a 429 or 503 slows every worker, not only the one
that saw it). Randomness and "now" are passed in so tests are deterministic.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Final

from bulkdl.errors import TransientError

#: HTTP statuses worth retrying: rate limiting and server-side faults; not other 4xx.
RETRYABLE_STATUSES: Final = frozenset({429, 500, 502, 503, 504})
#: Statuses that mean "this host is overloaded": every worker on the host should pause.
HOST_WIDE_STATUSES: Final = frozenset({429, 503})
_SECONDS_RE: Final = re.compile(r"[0-9]{1,12}")


def is_retryable_status(status: int) -> bool:
    """True for 429, 500, 502, 503, 504."""
    return status in RETRYABLE_STATUSES


def is_retryable_error(error: BaseException) -> bool:
    """True for a :class:`TransientError` whose status (if any) is retryable, and for resets,
    refused connections and timeouts; False for everything else (other 4xx, parse errors...)."""
    if isinstance(error, TransientError):
        return error.status is None or is_retryable_status(error.status)
    return isinstance(error, ConnectionResetError | ConnectionRefusedError | TimeoutError)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent
    or unreadable. A date in the past gives 0. ``now`` defaults to the current UTC time."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _SECONDS_RE.fullmatch(text):
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how long to retry one request.

    ``attempts`` counts every try, the first included. Waits grow as ``base * multiplier**n``
    up to ``cap``, with full jitter (a uniform draw in [0, that]). A server's Retry-After is
    honoured up to ``max_retry_after``; a longer demand is cut to it.
    """

    attempts: int = 4
    base: float = 0.5
    multiplier: float = 2.0
    cap: float = 30.0
    max_retry_after: float = 300.0

    def backoff(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """The jittered wait after failed attempt number ``attempt`` (1-based)."""
        exponent = max(0, attempt - 1)
        ceiling = (
            self.cap if exponent > 64 else min(self.cap, self.base * self.multiplier**exponent)
        )
        return rand() * ceiling

    def should_retry(self, attempt: int, error: BaseException) -> bool:
        """True when ``error`` is retryable and attempt ``attempt`` (1-based) was not the last."""
        return attempt < self.attempts and is_retryable_error(error)

    def delay(
        self, attempt: int, error: BaseException, rand: Callable[[], float] = random.random
    ) -> float:
        """Seconds to wait before the next attempt: the jittered backoff, or the server's
        Retry-After (capped at ``max_retry_after``) when that is longer."""
        wait = self.backoff(attempt, rand)
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float) and retry_after > 0:
            wait = max(wait, min(float(retry_after), self.max_retry_after))
        return wait


class HostBackoff:
    """Shared pause state for one host: once it says "wait", every worker on the host waits.

    Pure state over a caller-supplied monotonic ``now``: :meth:`penalize` pushes the time the
    host may be used again, :meth:`wait_time` says how long a worker must still hold off.
    Repeated penalties without a Retry-After grow exponentially (with full jitter); a success
    (:meth:`reset`) forgets the streak but not a pause still running.
    """

    __slots__ = ("_base", "_cap", "_rand", "_resume_at", "_strikes")

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 300.0,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._base = base
        self._cap = cap
        self._rand = rand
        self._resume_at = 0.0
        self._strikes = 0

    def wait_time(self, now: float) -> float:
        """Seconds a worker must wait before its next request to this host (0 if none)."""
        return max(0.0, self._resume_at - now)

    def penalize(self, now: float, retry_after: float | None = None) -> float:
        """Record a 429/503 at ``now``; returns the pause it sets (the server's Retry-After when
        given, else a growing jittered backoff), capped at ``cap``."""
        self._strikes += 1
        if retry_after is not None and retry_after >= 0:
            pause = min(retry_after, self._cap)
        else:
            exponent = min(self._strikes - 1, 32)
            pause = self._rand() * min(self._cap, self._base * 2.0**exponent)
        self._resume_at = max(self._resume_at, now + pause)
        return pause

    def reset(self) -> None:
        """A request succeeded: forget the streak of penalties."""
        self._strikes = 0

    def __repr__(self) -> str:
        return f"HostBackoff(resume_at={self._resume_at:.3f}, strikes={self._strikes})"
