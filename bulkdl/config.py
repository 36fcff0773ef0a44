"""Settings for ``bulkdl download``: defaults < ``--config`` TOML < ``BULKDL_*`` env < flags.

:func:`load_settings` reads the TOML file it is given (stdlib ``tomllib``) and nothing else: the
environment and the flags arrive as plain mappings, so precedence and every error message are
tested without touching ``os.environ``. Each value is checked where it comes from, so an error
names its source (``config.toml:3: concurrency must be between 1 and 256, got 0``,
``BULKDL_CONCURRENCY: not an integer: 'x'``) and raises :class:`~bulkdl.errors.InputError`.
Credentials never live here: a config holding ``password``/``token``-like keys is refused, and an
API URL carrying ``user:password@`` too (from every source, without repeating it: a URL is not a
safe place for a password, it ends up in logs, the ledger and ``ps``); :mod:`bulkdl.sources.auth`
reads them from its own environment variables or file. TLS: ``insecure`` turns certificate
verification off (callers warn on every run); ``ca_bundle`` names a PEM file of CAs to trust
instead of the system's, from ``--ca-bundle`` or ``BULKDL_CA_BUNDLE``. The standard
``SSL_CERT_FILE`` is not read here: OpenSSL honours it itself (in place of the system's CA file)
in the verifying context aiohttp builds on import, which is what a run without a ``ca_bundle``
uses, so that file is read once rather than twice (27-50 ms of every start-up).
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Final
from urllib.parse import SplitResult, urlsplit

from bulkdl.cpugate import usable_cores
from bulkdl.errors import InputError
from bulkdl.sources.nbia import PRESETS

DEFAULT_CONCURRENCY: Final = 16
#: Processes fetching and unpacking series (:mod:`bulkdl.fetchpool`); 0: one per usable core,
#: at most AUTO_PROCESSES_MAX and ``concurrency``; 1: this process alone.
DEFAULT_PROCESSES: Final = 0
#: The most processes chosen by default: each costs ~45 MB, and a few already keep up with any
#: link to a remote archive.
AUTO_PROCESSES_MAX: Final = 4
#: Connections to one host beyond ``concurrency``: each series in flight holds one connection
#: for its whole body, so metadata calls (sizes, headers) get two of their own instead of queueing
#: behind hour-long downloads. A fixed cap (say 8) would silently undo ``concurrency = 32``.
EXTRA_CONNECTIONS_PER_HOST: Final = 2


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a download run is configured by; built by :func:`load_settings`.

    ``api_url`` None means "not set": :func:`bulkdl.sources.nbia.resolve_base_url` picks the
    default. ``limit_per_host`` 0 (the default) means ``concurrency + 2``, filled in on
    construction, so readers always see a positive number. ``fsync`` False: files are flushed to
    disk only when a series is committed, not per file. ``staging`` None: downloads are staged
    under ``out/.bulkdl/``; a folder (node-local ``$TMPDIR``): in a private folder made inside it
    for the run. ``pack`` None: a file per instance; ``"zip"`` or ``"tar"``: one archive per
    series. Construction checks every range (raising
    InputError naming ``settings``), so a hand-built Settings is as valid as a loaded one.
    """

    api_url: str | None = None
    out: Path | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    processes: int = DEFAULT_PROCESSES
    layout: str = "default"
    retries: int = 4
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    accept_incomplete: bool = False
    dry_run: bool = False
    progress: bool = True
    json: bool = False
    new_file_names: bool = False
    metadata_batch: int = 1000
    limit_per_host: int = 0
    fsync: bool = False
    insecure: bool = False
    ca_bundle: Path | None = None
    staging: Path | None = None
    pack: str | None = None

    def __post_init__(self) -> None:
        for name in SETTING_NAMES:
            _check(name, getattr(self, name), "settings", name)
        # Frozen: the derived defaults are written once, here, before anyone can read them.
        if self.limit_per_host == 0:
            object.__setattr__(
                self, "limit_per_host", self.concurrency + EXTRA_CONNECTIONS_PER_HOST
            )
        if self.processes == 0:
            auto = min(usable_cores(), AUTO_PROCESSES_MAX, self.concurrency)
            object.__setattr__(self, "processes", auto)

    def public(self) -> dict[str, object]:
        """The settings as a JSON-able dict (paths as strings), for the ledger's run record."""
        out: dict[str, object] = {}
        for name in SETTING_NAMES:
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Path) else value
        return out


SETTING_NAMES: Final[tuple[str, ...]] = tuple(f.name for f in fields(Settings))

#: Environment variables read, and the setting each sets. Empty values count as unset.
ENV_VARS: Final[Mapping[str, str]] = {
    "BULKDL_API_URL": "api_url",
    "BULKDL_OUT": "out",
    "BULKDL_CONCURRENCY": "concurrency",
    "BULKDL_PROCESSES": "processes",
    "BULKDL_LAYOUT": "layout",
    "BULKDL_RETRIES": "retries",
    "BULKDL_CONNECT_TIMEOUT": "connect_timeout",
    "BULKDL_READ_TIMEOUT": "read_timeout",
    "BULKDL_ACCEPT_INCOMPLETE": "accept_incomplete",
    "BULKDL_INSECURE": "insecure",
    "BULKDL_CA_BUNDLE": "ca_bundle",
    "BULKDL_STAGING": "staging",
    "BULKDL_PACK": "pack",
}

#: Keys refused anywhere in a config file: credentials have their own, safer, channels.
SECRET_KEYS: Final = frozenset(
    {
        "password",
        "passwd",
        "token",
        "access_token",
        "refresh_token",
        "api_key",
        "apikey",
        "secret",
        "client_secret",
        "username",
        "user",
        "credentials",
    }
)
CREDENTIALS_HINT: Final = (
    "credentials do not go in a config file: set BULKDL_USERNAME and BULKDL_PASSWORD, or point "
    "BULKDL_CREDENTIALS_FILE at a chmod-600 file of username=/password= lines"
)

_INT_RANGES: Final[Mapping[str, tuple[int, int]]] = {
    "concurrency": (1, 256),
    "processes": (0, 64),
    "retries": (0, 100),
    "metadata_batch": (1, 10_000),  # TCIA's own tools send up to 10,000 per call
    "limit_per_host": (0, 1024),
}
_FLOATS: Final = frozenset({"connect_timeout", "read_timeout"})
_BOOLS: Final = frozenset(
    {"accept_incomplete", "dry_run", "progress", "json", "new_file_names", "fsync", "insecure"}
)
_PATHS: Final = frozenset({"out", "ca_bundle", "staging"})
#: What ``pack`` may be: the archive kinds of :mod:`bulkdl.archive`.
PACK_KINDS: Final = ("zip", "tar")
#: API URL schemes accepted (preset names aside).
_URL_SCHEMES: Final = frozenset({"http", "https"})
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def load_settings(
    *,
    flags: Mapping[str, object | None],
    config_file: Path | None,
    env: Mapping[str, str],
) -> Settings:
    """Settings from defaults, then ``config_file``, then ``env``, then ``flags`` (each wins over
    the ones before it).

    ``flags`` maps setting names (``read_timeout`` or ``read-timeout``) to the parsed command-line
    value, None meaning "not given" (so store_true flags need ``default=None``). Relative paths in
    the config file are taken from the config file's folder. Raises :class:`InputError` naming the
    source and the setting for an unreadable or invalid TOML file, an unknown or secret key, a value
    of the wrong type or out of range; ValueError for a flag name that is not a setting (a bug in
    the caller, not the user's input).
    """
    values: dict[str, object] = {}
    if config_file is not None:
        values.update(_from_toml(config_file))
    for var, name in ENV_VARS.items():
        raw = env.get(var)
        if raw is not None and raw.strip():
            values[name] = _coerce(name, raw.strip(), var, name.replace("_", "-"))
    for key, value in flags.items():
        name = key.replace("-", "_")
        if name not in SETTING_NAMES:
            raise ValueError(f"not a setting: {key!r}")
        if value is not None:
            flag = "--" + name.replace("_", "-")
            values[name] = _coerce(name, value, flag, name.replace("_", "-"))
    return Settings(**values)  # type: ignore[arg-type]  # each value was checked by _coerce


# --------------------------------------------------------------------------- TOML


def _from_toml(path: Path) -> dict[str, object]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{path}: cannot read config file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: config file is not UTF-8 text") from exc
    try:
        document = tomllib.loads(text)
    except RecursionError as exc:
        # tomllib recurses once per nested array or inline table: '[[[[...' exhausts the stack.
        raise InputError(f"{path}: invalid TOML: nested too deeply") from exc
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends "(at line 3, column 15)"; the line leads ours, as in a compiler.
        message = str(exc)
        found = re.search(r"at line (\d+)", message)
        at = f"{path}:{found.group(1)}" if found else str(path)
        raise InputError(f"{at}: invalid TOML: {message}") from exc

    def where(key: str) -> str:
        line = _key_line(text, key)
        return f"{path}:{line}" if line is not None else str(path)

    _refuse_secrets(document, where)
    table = document.get("download", {})
    if not isinstance(table, dict):
        raise InputError(f"{where('download')}: 'download' must be a table ([download])")
    top = {k: v for k, v in document.items() if k != "download"}
    return _checked([*top.items(), *table.items()], where, path.parent)


def settings_in_table(table: Mapping[str, object], path: Path, text: str) -> dict[str, object]:
    """The settings of one table of TOML file ``path`` (``text``, its content, gives line
    numbers), checked as a ``--config`` file's are: known names only, each once, no secrets,
    typed values in range, relative paths from the file's folder. For files that hold settings
    beside other things, such as dataset specs. Raises InputError naming ``path:line``."""

    def where(key: str) -> str:
        line = _key_line(text, key)
        return f"{path}:{line}" if line is not None else str(path)

    _refuse_secrets(table, where)
    return _checked(list(table.items()), where, path.parent)


def _checked(
    items: Sequence[tuple[str, object]], where: Callable[[str], str], base: Path
) -> dict[str, object]:
    """Settings from TOML ``items``: known names only, each once, typed values in range,
    relative paths from ``base``. Raises InputError naming where the bad key is."""
    values: dict[str, object] = {}
    seen: dict[str, str] = {}
    for key, value in items:
        name = key.replace("-", "_")
        if name not in SETTING_NAMES:
            known = ", ".join(n.replace("_", "-") for n in SETTING_NAMES)
            raise InputError(f"{where(key)}: unknown setting {key!r} (known: {known})")
        if name in seen:
            raise InputError(f"{where(key)}: {key!r} is set twice (also as {seen[name]!r})")
        seen[name] = key
        values[name] = _coerce(name, value, where(key), key, base=base, parse=False)
    return values


def _refuse_secrets(table: Mapping[str, object], where: Callable[[str], str]) -> None:
    for key, value in table.items():
        if key.lower().replace("-", "_") in SECRET_KEYS:
            raise InputError(f"{where(key)}: {key!r} refused: {CREDENTIALS_HINT}")
        if isinstance(value, dict):
            _refuse_secrets(value, where)


def _key_line(text: str, key: str) -> int | None:
    """The 1-based line where ``key`` is first assigned or opens a table, if a scan can tell."""
    quoted = re.escape(key)
    pattern = re.compile(
        rf"^[ \t]*(?:\[[ \t]*)?(?:{quoted}|\"{quoted}\"|'{quoted}')[ \t]*(?:=|\])", re.MULTILINE
    )
    found = pattern.search(text)
    return text.count("\n", 0, found.start()) + 1 if found else None


# --------------------------------------------------------------------------- values


def _coerce(
    name: str, value: object, source: str, key: str, *, base: Path | None = None, parse: bool = True
) -> object:
    """``value`` (TOML-typed, a flag's parsed value, or an env string) as setting ``name``'s type.

    ``source`` and ``key`` only word the error; ``base`` resolves relative paths; ``parse`` False
    (TOML, which has typed values) refuses ``"8"`` for a number instead of reading it.
    """
    typed: object
    if name in _INT_RANGES:
        typed = _to_int(value, source, key, parse)
    elif name in _FLOATS:
        typed = _to_float(value, source, key, parse)
    elif name in _BOOLS:
        typed = _to_bool(value, source, key, parse)
    elif name in _PATHS:
        if not isinstance(value, str | Path) or not str(value).strip() or "\0" in str(value):
            raise InputError(f"{source}: {key}: not a path: {value!r}")
        try:
            path = Path(value).expanduser()
        except RuntimeError as exc:  # '~nosuchuser/...': no home folder to expand to
            raise InputError(f"{source}: {key}: cannot expand {str(value)!r}: {exc}") from exc
        typed = base / path if base is not None and not path.is_absolute() else path
        if name == "ca_bundle" and not typed.is_file():
            raise InputError(f"{source}: {key}: no such file: {str(typed)!r}")
        if name == "staging" and not typed.is_dir():
            raise InputError(f"{source}: {key}: no such folder: {str(typed)!r}")
    else:
        if not isinstance(value, str) or not value.strip():
            raise InputError(f"{source}: {key}: not a non-empty string: {value!r}")
        typed = value.strip()
    _check(name, typed, source, key)
    return typed


def _to_int(value: object, source: str, key: str, parse: bool) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if parse and isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise InputError(f"{source}: {key}: not an integer: {value!r}")


def _to_float(value: object, source: str, key: str, parse: bool) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if parse and isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise InputError(f"{source}: {key}: not a number of seconds: {value!r}")


def _to_bool(value: object, source: str, key: str, parse: bool) -> bool:
    if isinstance(value, bool):
        return value
    if parse and isinstance(value, str):
        if value.strip().lower() in _TRUE:
            return True
        if value.strip().lower() in _FALSE:
            return False
    raise InputError(f"{source}: {key}: not a boolean (true/false, yes/no, 1/0): {value!r}")


def _check(name: str, value: object, source: str, key: str) -> None:
    """Raise InputError if an already-typed ``value`` is out of ``name``'s range."""
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise InputError(f"{source}: {key} must be between {low} and {high}, got {value!r}")
    elif name in _FLOATS:
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise InputError(f"{source}: {key} must be a number of seconds > 0, got {value!r}")
    elif name in _BOOLS:
        if not isinstance(value, bool):
            raise InputError(f"{source}: {key} must be true or false, got {value!r}")
    elif name == "api_url" and value is not None:
        _check_api_url(value, source, key)
    elif name == "pack" and value is not None and value not in PACK_KINDS:
        raise InputError(f"{source}: {key} must be zip or tar, got {value!r}")
    elif name == "layout" and (not isinstance(value, str) or not value.strip()):
        raise InputError(f"{source}: {key} must be a template or preset name, got {value!r}")
    elif name in _PATHS and value is not None and not isinstance(value, Path):
        raise InputError(f"{source}: {key} must be a path, got {value!r}")


def check_api_url(value: str, source: str, key: str = "api-url") -> None:
    """Refuse an API URL carrying ``user:password@`` (or anything else that is neither a preset
    nor an http(s) URL), naming ``source`` and never repeating a value that may hold a password.

    Raises :class:`InputError`. The URL's own shape (no query, ...) is checked again when used.
    """
    _check_api_url(value, source, key)


def _check_api_url(value: object, source: str, key: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{source}: {key} must be a URL or preset name, got {value!r}")
    text = value.strip()
    try:
        parts = urlsplit(text)
        netloc = parts.netloc
    except ValueError:  # "http://[::1": an unbalanced IPv6 bracket
        netloc, parts = "", None
    if "@" in netloc or (parts is not None and "@" in parts.path.split("/", 1)[0]):
        raise InputError(f"{source}: {key} must not carry user:password@; {CREDENTIALS_HINT}")
    if parts is not None and "://" not in text and text.lower() in PRESETS:
        return
    if parts is None or parts.scheme.lower() not in _URL_SCHEMES or not _has_host(parts):
        presets = ", ".join(PRESETS)
        shown = text if "@" not in text else "(not shown)"
        raise InputError(
            f"{source}: {key} must be an http(s) URL or a preset name ({presets}), got {shown!r}"
        )


def _has_host(parts: SplitResult) -> bool:
    try:
        parts.port  # noqa: B018  # raises ValueError for a port that is not a number
    except ValueError:
        return False
    return bool(parts.hostname)
