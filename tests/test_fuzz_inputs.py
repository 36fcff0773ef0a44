"""Hostile input: any config text, environment value or flag value either gives Settings or bulkdl's
own error naming where it came from (the file and line, the variable, the flag), never anything
else; argparse's refusals are exit 2; the real CLI never shows a traceback for a bad manifest or
config. Property tests (hypothesis) in-process, then a handful of cases through a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bulkdl.cli import parse_args, setting_flags
from bulkdl.config import ENV_VARS, SETTING_NAMES, Settings, load_settings
from bulkdl.errors import InputError

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- config files --------------------------------------------------------------------------

KEYS = [
    *SETTING_NAMES,
    *(n.replace("_", "-") for n in SETTING_NAMES),
    "download",
    "password",
    "Token",
    "user",
    "concurency",
    '"api-url"',
    "'out'",
    "download.concurrency",
]


def toml_float(value: float) -> str:
    """A float as TOML writes it (nan and inf included)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return repr(value)


VALUES = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats().map(toml_float),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(max_size=30).map(json.dumps),  # a TOML basic string, or (\ud800...) a broken one
    st.text(max_size=30).map(lambda t: f"'{t}'"),
    st.sampled_from(
        [
            "[1, 2]",
            "{ a = 1 }",
            "'''multi\nline'''",
            '"http://user:hunter2@example.org/nbia-api/services/v4/"',
            '"http://[::1"',
            '"http://example.org:99999/"',
            '"ftp://example.org/"',
            '"tcia"',
            '"~nosuchuser-bulkdl/x"',
            '"/dev/null"',
            '"."',
            '""',
            '"   "',
            "1979-05-27T07:32:00Z",
            "0x10",
            "1_000",
            "1e400",
            "[[1], [[2]]]",
            "[" * 3000 + "]" * 3000,
        ]
    ),
    st.text(max_size=12),
)
LINES = st.one_of(
    st.tuples(st.sampled_from(KEYS), VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.sampled_from(
        [
            "[download]",
            "[query]",
            "[download.sub]",
            "[[download]]",
            "[download",
            "# a comment",
            "",
            "= 1",
            "\r",
            "\t[download]  # trailing",
        ]
    ),
    st.text(max_size=20),
)
DOCUMENTS = st.one_of(st.text(), st.lists(LINES, max_size=10).map("\n".join))


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every generated config (hypothesis reruns a test many times)."""
    return tmp_path_factory.mktemp("fuzz")


def load_config_bytes(folder: Path, data: bytes) -> tuple[Settings | None, str | None, Path]:
    """Write ``data`` as a config file and load it: (settings, None) or (None, error message).

    Anything but Settings or InputError propagates and fails the calling test.
    """
    path = folder / "fuzz.toml"
    path.write_bytes(data)
    try:
        return load_settings(flags={}, config_file=path, env={}), None, path
    except InputError as exc:
        return None, str(exc), path


def echoes_password(message: str) -> bool:
    """True when an error about the API URL repeats the planted password (a wrong value for
    another setting may be quoted back: it was not given as a URL with credentials)."""
    return "hunter2" in message and re.search(r"api[-_]url", message) is not None


def assert_names_file_and_line(message: str, path: Path, text: str) -> None:
    """The message leads with the file, and any line it names exists in ``text``."""
    assert message.startswith(f"{path}:"), message
    found = re.match(rf"{re.escape(str(path))}:(\d+): ", message)
    if found is not None:
        # Lines as the config is read (universal newlines: a lone CR ends a line too).
        lines = text.replace("\r\n", "\n").replace("\r", "\n").count("\n") + 1
        assert 1 <= int(found.group(1)) <= lines, message


@FUZZ
@given(text=DOCUMENTS)
def test_any_config_text_gives_settings_or_input_error(fuzz_dir: Path, text: str) -> None:
    """Any TOML-ish text loads as Settings or raises InputError naming the file (and a line
    that exists); never another exception, and a password in it is never repeated."""
    settings_, message, path = load_config_bytes(fuzz_dir, text.encode("utf-8"))
    if message is None:
        assert isinstance(settings_, Settings)
        return
    assert_names_file_and_line(message, path, text)
    assert not echoes_password(message), message


@FUZZ
@given(data=st.binary(max_size=200))
def test_any_config_bytes_give_settings_or_input_error(fuzz_dir: Path, data: bytes) -> None:
    """Arbitrary bytes (not UTF-8, NULs) in a config file are Settings or InputError naming it."""
    settings_, message, path = load_config_bytes(fuzz_dir, data)
    if message is not None:
        assert_names_file_and_line(message, path, data.decode("utf-8", "replace"))
    else:
        assert isinstance(settings_, Settings)


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[download]\nretries = 2\nconcurrency = " + "[" * 3000 + "]" * 3000 + "\n", None),
        ("[download]\nout = '~nosuchuser-bulkdl/data'\n", 2),
        ("[download]\nca-bundle = 'no-such-ca.pem'\n", 2),
        ("api-url = 'http://[::1'\n", 1),
        ("api-url = 'http://example.org:99999/'\n", 1),
        ("\n\napi-url = 'me:hunter2@example.org/v4/'\n", 3),
        ("insecure = 'yes'\n", 1),
    ],
    ids=["deep-nesting", "unknown-user-home", "missing-ca", "ipv6", "port", "userinfo", "type"],
)
def test_config_corner_cases_found_by_fuzzing(tmp_path: Path, text: str, line: int | None) -> None:
    """Inputs that once escaped as RecursionError, RuntimeError or ValueError, or echoed a
    password, are InputErrors naming the file (and the line, where one applies)."""
    _, message, path = load_config_bytes(tmp_path, text.encode())
    assert message is not None
    where = f"{path}:{line}: " if line is not None else f"{path}: "
    assert message.startswith(where), message
    assert "hunter2" not in message


# --- environment ---------------------------------------------------------------------------

ENV_VALUES = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "0",
            "-1",
            "257",
            "nan",
            "inf",
            "1e400",
            "yes",
            "maybe",
            "~nosuchuser-bulkdl",
            "http://u:hunter2@example.org/",
            "hunter2@example.org",
            "http://[::1",
            "tcia",
            "nlst",
            "/dev/null",
            "/",
            "\x00",
        ]
    ),
)


@FUZZ
@given(env=st.dictionaries(st.sampled_from(sorted(ENV_VARS)), ENV_VALUES, max_size=6))
def test_any_env_values_give_settings_or_input_error(env: dict[str, str]) -> None:
    """Arbitrary values of every BULKDL_* (and SSL_CERT_FILE) variable are Settings or an
    InputError that names the variable, never repeating a password."""
    try:
        result = load_settings(flags={}, config_file=None, env=env)
    except InputError as exc:
        message = str(exc)
        assert any(message.startswith(f"{var}: ") for var in env), message
        assert not echoes_password(message), message
    else:
        assert isinstance(result, Settings)


# --- flags ---------------------------------------------------------------------------------

VALUE_FLAGS = [
    "--concurrency",
    "--retries",
    "--read-timeout",
    "--connect-timeout",
    "--layout",
    "--api-url",
    "--out",
    "--ca-bundle",
    "--collection",
    "--modality",
]
BOOL_FLAGS = [
    "--accept-incomplete",
    "--dry-run",
    "--no-progress",
    "--json",
    "--new-file-names",
    "--fsync",
    "--insecure",
    "-v",
    "-q",
]
FLAG_VALUES = st.one_of(st.text(max_size=20), ENV_VALUES, st.sampled_from(["-5", "1e9", "-", "--"]))
ARG_GROUPS = st.one_of(
    st.tuples(st.sampled_from(VALUE_FLAGS), FLAG_VALUES).map(list),
    st.tuples(st.sampled_from(VALUE_FLAGS), FLAG_VALUES).map(lambda t: [f"{t[0]}={t[1]}"]),
    st.sampled_from(BOOL_FLAGS).map(lambda f: [f]),
    st.text(max_size=10).map(lambda t: [t]),
)


def parse(argv: list[str]) -> tuple[argparse.Namespace | None, int | None]:
    """Parse ``argv`` as ``bulkdl`` does, silencing its output: (namespace, None) or
    (None, exit code)."""
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            return parse_args(argv), None
    except SystemExit as exc:
        return None, exc.code if isinstance(exc.code, int) else 2


def asks_for_help(argv: list[str]) -> bool:
    """True when an argument could be argparse's -h/--help (it exits 0 after printing)."""
    return any(a == "-h" or (len(a) > 2 and "--help".startswith(a.split("=")[0])) for a in argv)


@FUZZ
@given(groups=st.lists(ARG_GROUPS, max_size=6))
def test_any_download_flags_give_settings_usage_error_or_input_error(
    groups: list[list[str]],
) -> None:
    """Any download flags parse (then load as Settings or an InputError naming the flag) or are
    refused by argparse with exit 2; no other exception escapes."""
    argv = ["download", *(arg for group in groups for arg in group)]
    args, code = parse(argv)
    if args is None:
        assert code == 2 or (code == 0 and asks_for_help(argv)), (argv, code)
        return
    try:
        result = load_settings(flags=setting_flags(args), config_file=None, env={})
    except InputError as exc:
        assert re.match(r"--[a-z-]+: ", str(exc)), str(exc)
        assert not echoes_password(str(exc)), str(exc)
    else:
        assert isinstance(result, Settings)


@FUZZ
@given(
    listing=st.one_of(st.just([]), st.text(max_size=10).map(lambda t: [t])),
    since=FLAG_VALUES,
    fmt=st.text(max_size=6),
    bandwidth=FLAG_VALUES,
)
def test_any_query_and_serve_flag_values_parse_or_exit_2(
    listing: list[str], since: str, fmt: str, bandwidth: str
) -> None:
    """Typed flags of query (--updated-since, --format) and serve-fake (--bandwidth) either
    parse to sane values or are argparse errors (exit 2), whatever the text."""
    for argv in (
        ["query", *listing, f"--updated-since={since}", f"--format={fmt}"],
        ["serve-fake", f"--bandwidth={bandwidth}", f"--port={since}"],
    ):
        args, code = parse(argv)
        if args is None:
            assert code == 2 or (code == 0 and asks_for_help(argv)), (argv, code)
        elif argv[0] == "serve-fake":
            assert math.isfinite(args.bandwidth) and args.bandwidth > 0


@pytest.mark.parametrize(
    "value", ["1-1-99999999999999999999", "99999999999999999999-01-01", "02-30-2024"]
)
def test_absurd_dates_are_usage_errors(value: str) -> None:
    """A date whose year overflows a C int is argparse's exit 2, not an OverflowError."""
    assert parse(["query", "--updated-since", value]) == (None, 2)


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "-4MB", "0"])
def test_absurd_bandwidths_are_usage_errors(value: str) -> None:
    """--bandwidth must be a finite positive size: nan and inf are exit 2."""
    assert parse(["serve-fake", f"--bandwidth={value}"]) == (None, 2)


@pytest.mark.parametrize(
    "argv",
    [["download", "--concurrency=--"], ["serve-fake", "--port=--"], ["query", "--format=--"]],
)
def test_double_dash_as_a_flag_value_is_a_usage_error(argv: list[str]) -> None:
    """``--flag=--`` (which Python 3.11's argparse turns into []) is exit 2, not a crash later."""
    assert parse(argv) == (None, 2)


# --- the real CLI --------------------------------------------------------------------------


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bulkdl`` in ``cwd`` without any BULKDL_* variable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BULKDL_")}
    env.pop("SSL_CERT_FILE", None)
    return subprocess.run(
        [sys.executable, "-m", "bulkdl", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


#: A port nothing listens on: a malformed input must be refused before any request.
NOWHERE = "http://127.0.0.1:9/nbia-api/services/v4/"
TCIA_HEAD = "downloadServerUrl=https://x\nincludeAnnotation=true\nListOfSeriesToDownload=\n"


@pytest.mark.parametrize(
    ("name", "data", "line"),
    [
        ("bad.tcia", (TCIA_HEAD + "1.2.3\nnot a uid!\n").encode(), 5),
        ("nocol.csv", b"Collection,Modality\nA,CT\n", 1),
        ("badrow.csv", b"SeriesInstanceUID\n1.2.3\n1.2.x\n", 3),
        ("broken.json", b'[\n"1.2.3",\n', 3),
        ("latin1.txt", "1.2.3\n1.2.4 \xe9\n".encode("latin-1"), 2),
        ("garbage.txt", bytes(range(256)), 2),  # byte 10 ends line 1
    ],
)
def test_malformed_manifest_is_exit_2_naming_file_and_line(
    tmp_path: Path, name: str, data: bytes, line: int
) -> None:
    """A malformed manifest stops the real CLI with exit 2 and one line naming file:line."""
    (tmp_path / name).write_bytes(data)
    result = run_cli("download", name, "--out", "out", "--api-url", NOWHERE, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"bulkdl: error: {name}:{line}: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("[download]\nconcurrency = 4\nretries = = 2\n", 3),
        ("[download]\nconcurrency = 4\n\nconcurency = 8\n", 4),
        ("[download]\nread-timeout = 'soon'\n", 2),
        ("[download]\npassword = 'hunter2'\n", 2),
        ("[download]\ninsecure = 1\n", 2),
        ("[download]\nca-bundle = 'missing.pem'\n", 2),
        ("[download]\nout = '~nosuchuser-bulkdl/x'\n", 2),
        ("out = 'x'\nconcurrency = " + "[" * 3000 + "]" * 3000 + "\n", None),
    ],
    ids=["syntax", "unknown-key", "type", "secret", "bool", "ca", "home", "nesting"],
)
def test_malformed_config_is_exit_2_naming_file_and_line(
    tmp_path: Path, text: str, line: int | None
) -> None:
    """A malformed config stops the real CLI with exit 2 and one line naming the file and line
    (the whole file for a nesting bomb, which has none), never echoing a password."""
    (tmp_path / "m.txt").write_text("1.2.3\n")
    (tmp_path / "site.toml").write_text(text)
    result = run_cli(
        "download",
        "m.txt",
        "--out",
        "out",
        "--api-url",
        NOWHERE,
        "--config",
        "site.toml",
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "hunter2" not in result.stderr
    where = f"site.toml:{line}: " if line is not None else "site.toml: "
    assert result.stderr.startswith(f"bulkdl: error: {where}"), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["download", "m.txt", "--concurrency", "many"],
        ["download", "m.txt", "--read-timeout", "1e999"],
        ["query", "--updated-since", "1-1-99999999999999999999"],
        ["query", "--format", "xml"],
        ["serve-fake", "--bandwidth", "nan"],
        ["download", "m.txt", "--out", "o", "--concurrency", "0"],
        ["download", "m.txt", "--out", "o", "--api-url", "gopher://example.org/"],
    ],
)
def test_bad_flag_values_are_exit_2_without_traceback(tmp_path: Path, argv: list[str]) -> None:
    """Bad flag values through the real CLI are exit 2 with a message, never a traceback."""
    (tmp_path / "m.txt").write_text("1.2.3\n")
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in result.stderr
