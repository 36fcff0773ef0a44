"""The fake server's record of what it was asked: one record per NBIA request, and counters.

Tests read it to check what a client sent. Only whether an Authorization header was present is
kept, never its value; password and token form fields are masked. Thread-safe (the server may
run on another thread's event loop). Pure: no I/O.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

_SECRET_FIELDS = frozenset({"password", "refresh_token", "access_token", "client_secret"})


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request: when, what, with which parameters, and the status answered."""

    time: float
    method: str
    path: str
    version: str  # "v1", "v2", "v4", or "" for the un-versioned routes
    endpoint: str
    query: dict[str, str] = field(default_factory=dict)
    form: dict[str, str] = field(default_factory=dict)
    status: int = 0
    authorization: bool = False


def mask_secrets(form: Mapping[str, str]) -> dict[str, str]:
    """``form`` with passwords and tokens replaced by ``***``."""
    return {k: ("***" if k in _SECRET_FIELDS else v) for k, v in form.items()}


class RequestLog:
    """Records and per-endpoint counts, appended by the server and read by tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._counts: Counter[str] = Counter()

    def add(self, record: RequestRecord) -> None:
        """Append one record."""
        with self._lock:
            self._records.append(record)
            self._counts[record.endpoint] += 1

    @property
    def records(self) -> list[RequestRecord]:
        """A copy of every record so far, oldest first."""
        with self._lock:
            return list(self._records)

    def count(self, endpoint: str) -> int:
        """How many requests ``endpoint`` has had."""
        with self._lock:
            return self._counts[endpoint]

    @property
    def counts(self) -> dict[str, int]:
        """Requests per endpoint."""
        with self._lock:
            return dict(self._counts)

    def for_endpoint(self, endpoint: str) -> list[RequestRecord]:
        """The records of one endpoint."""
        return [r for r in self.records if r.endpoint == endpoint]

    def reset(self) -> None:
        """Forget everything."""
        with self._lock:
            self._records.clear()
            self._counts.clear()

    def to_dict(self) -> dict[str, object]:
        """Everything as plain data, for the admin route."""
        with self._lock:
            return {"records": [asdict(r) for r in self._records], "counts": dict(self._counts)}
