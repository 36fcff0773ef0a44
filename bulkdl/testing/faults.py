"""Scripted faults for the fake NBIA server, per series or per endpoint, and per attempt.

A :class:`Fault` says what goes wrong with one response and where: before the headers (an HTTP
status, a reset or a stall), in the body at a byte offset or fraction (reset, stall, corrupt byte,
a clean early end), optionally relative to one ZIP entry (``in_entry="md5hashes.csv"`` places it in
the trailing MD5 list), in the ZIP's content (fewer images, hostile names, an empty series, another
series), or in what is sent instead (an HTML page or any other 200 body, a wrong Content-Type). A
:class:`FaultPlan` maps series UIDs to faults per attempt of getImage/getImageWithMD5Hash (the n-th
image request for that series) and endpoint names (``getSeriesMetadata``, ``getSeries``...) to
faults per request of that endpoint; it is thread-safe and round-trips through plain dicts so it
can be loaded from a JSON or TOML file or posted to the server's admin route. Pure except
:meth:`FaultPlan.load`, which reads a file.
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
#: What a Tomcat in front of NBIA answers (with a 200 from some proxies) when the app fails.
HTML_ERROR_PAGE = (
    '<!doctype html><html lang="en"><head><title>HTTP Status 500 - Internal Server Error</title>'
    '</head><body><h1>HTTP Status 500 - Internal Server Error</h1><hr class="line" />'
    "<p><b>Type</b> Exception Report</p><p><b>Message</b> Request processing failed</p>"
    "</body></html>"
)
#: A UID in a plan that applies to every series without a plan of its own.
ANY_SERIES = "*"


class FaultKind(StrEnum):
    """What goes wrong."""

    STATUS = "status"  # an HTTP error status with a short text body, before any ZIP byte
    RESET = "reset"  # the connection is reset (TCP RST) at a body offset (or before the headers)
    STALL = "stall"  # no bytes for ``seconds`` (None: until the client gives up) at an offset
    TRUNCATE = "truncate"  # the body ends cleanly at an offset: a well-formed but short 200
    SHORT_ZIP = "short_zip"  # a valid ZIP with only ``keep`` images (NBIA's silent truncation)
    CORRUPT = "corrupt"  # one byte flipped inside an image's (or ``in_entry``'s) compressed data
    HOSTILE_NAMES = "hostile_names"  # images named ../evil.dcm, /abs.dcm, ..\\win.dcm, C:/drive.dcm
    NOT_ZIP = "not_zip"  # 200 with an HTML error page instead of a ZIP
    EMPTY_SERIES = "empty_series"  # a ZIP holding only LICENSE (and an empty md5hashes.csv)
    WRONG_SERIES = "wrong_series"  # another series' images, valid in every other way
    BODY = "body"  # 200 with ``text`` as the body, labelled ``content_type``, instead of the answer
    CONTENT_TYPE = "content_type"  # the genuine body, labelled ``content_type``


#: Kinds that make sense on a query (metadata) endpoint; the others are about ZIP content.
ENDPOINT_KINDS = frozenset(
    {
        FaultKind.STATUS,
        FaultKind.RESET,
        FaultKind.STALL,
        FaultKind.TRUNCATE,
        FaultKind.CORRUPT,
        FaultKind.NOT_ZIP,
        FaultKind.BODY,
        FaultKind.CONTENT_TYPE,
    }
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One fault of one response. Use the class methods; the fields say where and how.

    Position (RESET, STALL, CORRUPT, TRUNCATE): ``at_offset`` bytes or ``at_fraction`` of the
    body (or of ``in_entry``'s compressed data when set); neither means the middle.
    ``before_headers`` (RESET, STALL) strikes before the status line is sent.
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
    content_type: str | None = None
    before_headers: bool = False

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
        before_headers: bool = False,
    ) -> Fault:
        """Reset the connection (TCP RST) after sending the body up to the position, or before
        any byte of the response with ``before_headers``."""
        return cls(
            FaultKind.RESET,
            at_offset=at_offset,
            at_fraction=at_fraction,
            in_entry=in_entry,
            before_headers=before_headers,
        )

    @classmethod
    def stall(
        cls,
        seconds: float | None = None,
        *,
        at_offset: int | None = None,
        at_fraction: float | None = None,
        in_entry: str | None = None,
        before_headers: bool = False,
    ) -> Fault:
        """Stop sending at the position for ``seconds`` (None: until the client disconnects);
        with ``before_headers``, stay silent before the status line instead."""
        return cls(
            FaultKind.STALL,
            seconds=seconds,
            at_offset=at_offset,
            at_fraction=at_fraction,
            in_entry=in_entry,
            before_headers=before_headers,
        )

    @classmethod
    def truncate(
        cls,
        *,
        at_offset: int | None = None,
        at_fraction: float | None = None,
        in_entry: str | None = None,
    ) -> Fault:
        """End the body cleanly at the position: a well-formed 200 whose body is cut short."""
        return cls(
            FaultKind.TRUNCATE, at_offset=at_offset, at_fraction=at_fraction, in_entry=in_entry
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
        """Answer 200 with an HTML error page (on any endpoint: it is no ZIP, JSON or CSV)."""
        return cls(FaultKind.NOT_ZIP)

    @classmethod
    def html_page(cls) -> Fault:
        """Answer 200 with an HTML error page; the same as :meth:`not_zip`, named for queries."""
        return cls(FaultKind.NOT_ZIP)

    @classmethod
    def body(cls, text: str, content_type: str = "application/json") -> Fault:
        """Answer 200 with ``text`` labelled ``content_type`` instead of the real answer."""
        return cls(FaultKind.BODY, text=text, content_type=content_type)

    @classmethod
    def wrong_content_type(cls, content_type: str = "text/plain") -> Fault:
        """Send the genuine body, labelled ``content_type``."""
        return cls(FaultKind.CONTENT_TYPE, content_type=content_type)

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


class _Plans:
    """Faults per attempt for one kind of key (series UIDs, or endpoint names). Not locked."""

    __slots__ = ("always", "attempts", "scripts")

    def __init__(self) -> None:
        self.scripts: dict[str, tuple[Fault | None, ...]] = {}
        self.always: dict[str, Fault] = {}
        self.attempts: Counter[str] = Counter()

    def script(self, key: str, faults: tuple[Fault | None, ...]) -> None:
        self.attempts.pop(key, None)
        self.always.pop(key, None)
        self.scripts[key] = faults

    def set_always(self, key: str, fault: Fault) -> None:
        self.attempts.pop(key, None)
        self.scripts.pop(key, None)
        self.always[key] = fault

    def clear(self) -> None:
        self.scripts.clear()
        self.always.clear()
        self.attempts.clear()

    def next_fault(self, key: str) -> Fault | None:
        self.attempts[key] += 1
        attempt = self.attempts[key]
        for k in (key, ANY_SERIES):
            if k in self.always:
                return self.always[k]
            if k in self.scripts:
                script = self.scripts[k]
                return script[attempt - 1] if attempt <= len(script) else None
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            key: {"script": [f.to_dict() if f else {"kind": "clean"} for f in faults]}
            for key, faults in self.scripts.items()
        }
        out.update({key: {"always": f.to_dict()} for key, f in self.always.items()})
        return out


def _check_endpoint_faults(name: str, faults: tuple[Fault | None, ...]) -> None:
    for fault in faults:
        if fault is not None and fault.kind not in ENDPOINT_KINDS:
            raise ValueError(f"{name}: a {fault.kind} fault only applies to getImage")


class FaultPlan:
    """Which fault each attempt of each series, and each request of each endpoint, gets;
    thread-safe.

    ``script(uid, f1, f2)``: image attempt 1 of the series gets f1, attempt 2 f2 (None = clean),
    later ones are clean. ``always(uid, f)``: every attempt gets f. The UID ``"*"`` applies to
    series without a plan. ``endpoint(name, f1, f2)`` and ``endpoint_always(name, f)`` do the same
    for every request of a query endpoint (``getSeriesMetadata``, ``getSeries``...), counted per
    endpoint; they never apply to the image endpoints, which the series plans cover.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series = _Plans()
        self._endpoints = _Plans()

    def script(self, series_uid: str, *faults: Fault | None) -> None:
        """Fault the next attempts of ``series_uid`` in turn; replaces its previous plan and
        restarts its attempt count (the next request is attempt 1)."""
        with self._lock:
            self._series.script(series_uid, faults)

    def always(self, series_uid: str, fault: Fault) -> None:
        """Fault every attempt of ``series_uid``; replaces its plan and restarts its count."""
        with self._lock:
            self._series.set_always(series_uid, fault)

    def endpoint(self, name: str, *faults: Fault | None) -> None:
        """Fault the next requests of endpoint ``name`` in turn (like :meth:`script`).

        Raises ValueError for a fault about ZIP content (short_zip, hostile_names...).
        """
        _check_endpoint_faults(name, faults)
        with self._lock:
            self._endpoints.script(name, faults)

    def endpoint_always(self, name: str, fault: Fault) -> None:
        """Fault every request of endpoint ``name`` (like :meth:`always`). Raises ValueError as
        :meth:`endpoint` does."""
        _check_endpoint_faults(name, (fault,))
        with self._lock:
            self._endpoints.set_always(name, fault)

    def clear(self) -> None:
        """Forget every plan and every attempt count."""
        with self._lock:
            self._series.clear()
            self._endpoints.clear()

    def attempts(self, series_uid: str) -> int:
        """How many image requests ``series_uid`` has had."""
        with self._lock:
            return self._series.attempts[series_uid]

    def endpoint_requests(self, name: str) -> int:
        """How many requests endpoint ``name`` has had since its plan was set."""
        with self._lock:
            return self._endpoints.attempts[name]

    def next_fault(self, series_uid: str) -> Fault | None:
        """Count one more attempt of ``series_uid`` and return the fault it gets (None = clean)."""
        with self._lock:
            return self._series.next_fault(series_uid)

    def next_endpoint_fault(self, name: str) -> Fault | None:
        """Count one more request of endpoint ``name``; return the fault it gets (None = clean)."""
        with self._lock:
            return self._endpoints.next_fault(name)

    def to_dict(self) -> dict[str, Any]:
        """The plan as plain data: ``{"series": {uid: plan}, "endpoints": {name: plan}}``, each
        plan ``{"script": [fault, ...]}`` or ``{"always": fault}``."""
        with self._lock:
            data: dict[str, Any] = {"series": self._series.to_dict()}
            endpoints = self._endpoints.to_dict()
        if endpoints:
            data["endpoints"] = endpoints
        return data

    def update(self, data: Mapping[str, Any]) -> None:
        """Add the plans in ``data`` (the :meth:`to_dict` shape). Raises ValueError if malformed."""
        unknown = set(data) - {"series", "endpoints"}
        if unknown:
            raise ValueError(
                f"unknown keys {sorted(unknown)}: expected "
                "{'series': {uid: plan}, 'endpoints': {name: plan}}"
            )
        for section, always, script in (
            ("series", self.always, self.script),
            ("endpoints", self.endpoint_always, self.endpoint),
        ):
            plans = data.get(section, {})
            if not isinstance(plans, Mapping):
                raise ValueError(f"{section!r} must map names to plans")
            for key, plan in plans.items():
                if not isinstance(plan, Mapping):
                    raise ValueError(f"{key}: a plan is {{'script': [...]}} or {{'always': {{}}}}")
                if "always" in plan:
                    fault = Fault.from_dict(plan["always"])
                    if fault is None:
                        raise ValueError(f"{key}: 'always' needs a fault")
                    always(key, fault)
                else:
                    script(key, *(Fault.from_dict(f) for f in plan.get("script", [])))

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
