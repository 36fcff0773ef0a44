"""Scripted faults for the fake NBIA server, per series and per download attempt.

A :class:`Fault` says what goes wrong with one getImage/getImageWithMD5Hash response and where:
before the headers (an HTTP status), in the body at a byte offset or fraction (reset, stall,
corrupt byte), optionally relative to one ZIP entry (``in_entry="md5hashes.csv"`` places it in the
trailing MD5 list), or in the ZIP's content (fewer images, hostile names, an empty series, an HTML
page). A :class:`FaultPlan` maps series UIDs to faults per attempt (the n-th image request for that
series), is thread-safe, and round-trips through plain dicts so it can be loaded from a JSON or
TOML file or posted to the server's admin route. Pure except :meth:`FaultPlan.load`, which reads a
file.
"""

from __future__ import annotations

import json
import threading
import tomllib
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any

_DEFAULT_TEXT = "Error: Unable to process the request due to a server error."
#: A UID in a plan that applies to every series without a plan of its own.
ANY_SERIES = "*"


class FaultKind(StrEnum):
    """What goes wrong."""

    STATUS = "status"  # an HTTP error status with a short text body, before any ZIP byte
    RESET = "reset"  # the connection is reset (TCP RST) at a body offset
    STALL = "stall"  # no bytes for ``seconds`` (None: until the client gives up) at an offset
    SHORT_ZIP = "short_zip"  # a valid ZIP with only ``keep`` images (NBIA's silent truncation)
    CORRUPT = "corrupt"  # one byte flipped inside an image's (or ``in_entry``'s) compressed data
    HOSTILE_NAMES = "hostile_names"  # images named ../evil.dcm, /abs.dcm, ..\\win.dcm, C:/drive.dcm
    NOT_ZIP = "not_zip"  # 200 with an HTML error page instead of a ZIP
    EMPTY_SERIES = "empty_series"  # a ZIP holding only LICENSE (and an empty md5hashes.csv)
    WRONG_SERIES = "wrong_series"  # another series' images, valid in every other way


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of one response. Use the class methods; the fields say where and how.

    Position (RESET, STALL, CORRUPT): ``at_offset`` bytes or ``at_fraction`` of the body (or of
    ``in_entry``'s compressed data when set); neither means the middle.
    """

    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    text: str = _DEFAULT_TEXT
    at_offset: int | None = None
    at_fraction: float | None = None
    in_entry: str | None = None
    seconds: float | None = None
    keep: int | None = None
    other: str | None = None

    @classmethod
    def http_status(cls, status: int = 500, text: str | None = None) -> Fault:
        """Answer ``status`` with a short text body instead of the ZIP."""
        return cls(FaultKind.STATUS, status=status, text=text or _DEFAULT_TEXT)

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0) -> Fault:
        """Answer 429 with ``Retry-After: <retry_after>`` (whole seconds, rounded up)."""
        return cls(FaultKind.STATUS, status=429, retry_after=retry_after, text="Too Many Requests")

    @classmethod
    def reset(
        cls,
        *,
        at_offset: int | None = None,
        at_fraction: float | None = None,
        in_entry: str | None = None,
    ) -> Fault:
        """Reset the connection (TCP RST) after sending the body up to the position."""
        return cls(FaultKind.RESET, at_offset=at_offset, at_fraction=at_fraction, in_entry=in_entry)

    @classmethod
    def stall(
        cls,
        seconds: float | None = None,
        *,
        at_offset: int | None = None,
        at_fraction: float | None = None,
        in_entry: str | None = None,
    ) -> Fault:
        """Stop sending at the position for ``seconds`` (None: until the client disconnects)."""
        return cls(
            FaultKind.STALL,
            seconds=seconds,
            at_offset=at_offset,
            at_fraction=at_fraction,
            in_entry=in_entry,
        )

    @classmethod
    def short_zip(cls, keep: int = 1) -> Fault:
        """Send a valid ZIP with only the first ``keep`` images; md5hashes.csv lists only those."""
        return cls(FaultKind.SHORT_ZIP, keep=keep)

    @classmethod
    def corrupt(
        cls,
        *,
        at_offset: int | None = None,
        at_fraction: float | None = None,
        in_entry: str | None = None,
    ) -> Fault:
        """Flip one byte of compressed data: an image's, or ``in_entry``'s when given."""
        return cls(
            FaultKind.CORRUPT, at_offset=at_offset, at_fraction=at_fraction, in_entry=in_entry
        )

    @classmethod
    def hostile_names(cls) -> Fault:
        """Rename the first images to ``../evil.dcm``, ``/abs.dcm``, ``..\\win.dcm``...."""
        return cls(FaultKind.HOSTILE_NAMES)

    @classmethod
    def not_zip(cls) -> Fault:
        """Answer 200 with an HTML error page."""
        return cls(FaultKind.NOT_ZIP)

    @classmethod
    def empty_series(cls) -> Fault:
        """Answer with a ZIP holding only LICENSE."""
        return cls(FaultKind.EMPTY_SERIES)

    @classmethod
    def wrong_series(cls, other: str) -> Fault:
        """Answer with the ZIP of series ``other`` (a mix-up on the server's side)."""
        return cls(FaultKind.WRONG_SERIES, other=other)

    def to_dict(self) -> dict[str, Any]:
        """The fault as plain data (defaults left out)."""
        default = {f.name: f.default for f in fields(self)}
        return {
            k: (str(v) if k == "kind" else v)
            for k, v in asdict(self).items()
            if v != default[k] or k == "kind"
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Fault | None:
        """Read a fault written by :meth:`to_dict`; ``{"kind": "clean"}`` means no fault.

        Raises ValueError on an unknown kind or field.
        """
        values = dict(data)
        kind = values.pop("kind", None)
        if kind in ("clean", "none", None):
            return None
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        return cls(FaultKind(kind), **values)

    def position(self, total: int) -> int:
        """The byte offset in a span of ``total`` bytes where this fault strikes."""
        if self.at_offset is not None:
            return max(0, min(self.at_offset, total))
        fraction = 0.5 if self.at_fraction is None else self.at_fraction
        return max(0, min(int(total * fraction), total))


class FaultPlan:
    """Which fault each attempt of each series gets; thread-safe.

    ``script(uid, f1, f2)``: attempt 1 gets f1, attempt 2 f2 (None = clean), later ones are clean.
    ``always(uid, f)``: every attempt gets f. The UID ``"*"`` applies to series without a plan.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._scripts: dict[str, tuple[Fault | None, ...]] = {}
        self._always: dict[str, Fault] = {}
        self._attempts: Counter[str] = Counter()

    def script(self, series_uid: str, *faults: Fault | None) -> None:
        """Fault the next attempts of ``series_uid`` in turn; replaces its previous plan and
        restarts its attempt count (the next request is attempt 1)."""
        with self._lock:
            self._attempts.pop(series_uid, None)
            self._always.pop(series_uid, None)
            self._scripts[series_uid] = faults

    def always(self, series_uid: str, fault: Fault) -> None:
        """Fault every attempt of ``series_uid``; replaces its plan and restarts its count."""
        with self._lock:
            self._attempts.pop(series_uid, None)
            self._scripts.pop(series_uid, None)
            self._always[series_uid] = fault

    def clear(self) -> None:
        """Forget every plan and every attempt count."""
        with self._lock:
            self._scripts.clear()
            self._always.clear()
            self._attempts.clear()

    def attempts(self, series_uid: str) -> int:
        """How many image requests ``series_uid`` has had."""
        with self._lock:
            return self._attempts[series_uid]

    def next_fault(self, series_uid: str) -> Fault | None:
        """Count one more attempt of ``series_uid`` and return the fault it gets (None = clean)."""
        with self._lock:
            self._attempts[series_uid] += 1
            attempt = self._attempts[series_uid]
            for uid in (series_uid, ANY_SERIES):
                if uid in self._always:
                    return self._always[uid]
                if uid in self._scripts:
                    script = self._scripts[uid]
                    return script[attempt - 1] if attempt <= len(script) else None
            return None

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data: ``{"series": {uid: {"script": [...]} | {"always": {...}}}}``."""
        with self._lock:
            series: dict[str, Any] = {
                uid: {"script": [f.to_dict() if f else {"kind": "clean"} for f in faults]}
                for uid, faults in self._scripts.items()
            }
            series.update({uid: {"always": f.to_dict()} for uid, f in self._always.items()})
        return {"series": series}

    def update(self, data: Mapping[str, Any]) -> None:
        """Add the plans in ``data`` (the :meth:`to_dict` shape). Raises ValueError if malformed."""
        unknown = set(data) - {"series"}
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)}: expected {{'series': {{uid: plan}}}}"
            )
        series = data.get("series", {})
        if not isinstance(series, Mapping):
            raise ValueError("'series' must map series UIDs to plans")
        for uid, plan in series.items():
            if "always" in plan:
                fault = Fault.from_dict(plan["always"])
                if fault is None:
                    raise ValueError(f"{uid}: 'always' needs a fault")
                self.always(uid, fault)
            else:
                self.script(uid, *(Fault.from_dict(f) for f in plan.get("script", [])))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FaultPlan:
        """A plan from plain data. Raises ValueError if malformed."""
        plan = cls()
        plan.update(data)
        return plan

    @classmethod
    def load(cls, path: Path | str) -> FaultPlan:
        """A plan from a ``.json`` or ``.toml`` file. Raises OSError or ValueError."""
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        return cls.from_dict(data)
