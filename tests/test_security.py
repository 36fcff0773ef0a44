"""Secrets never leak: real `bulkdl` subprocesses against a token-protected (v2) fake NBIA server.

A password and every token the server issues for it are planted; downloads and queries run at each
log level, with ``--json``, with a 401 (re-authentication), a 500, an expiring token (refresh
grant) and a persistent fault (failures.csv). Then every output is searched for them, raw and
URL-encoded: stdout, stderr, every byte under the output folder (the SQLite ledger included) and
``/proc/<pid>/cmdline`` sampled while the process runs. A URL with ``user:password@`` is refused
from every source (flag, environment, config file, Python API) without repeating the password, and
no credentials flag exists on the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

import bulkdl
from bulkdl.cli import build_parser
from bulkdl.errors import InputError
from bulkdl.manifest import write_tcia
from bulkdl.testing import FakeArchive, FakeNbiaServer, Fault, run_in_thread
from bulkdl.testing.auth import TokenReply

USERNAME = "alice"
PASSWORD = "pw-Q7%x Secr3t&=+/Z9!"  # characters that URL-encoding would change, on purpose
WRONG_PASSWORD = "wrong-K2pz-Secr3t"


@dataclass
class V2Server:
    """The fake server requiring tokens on v2, and every token it has issued."""

    server: FakeNbiaServer
    issued: set[str] = field(default_factory=set)

    @property
    def v2_url(self) -> str:
        """The v2 API base (needs a token)."""
        return self.server.root_url + "/nbia-api/services/v2/"

    def secrets(self) -> list[str]:
        """The password and every access or refresh token issued so far."""
        return [PASSWORD, WRONG_PASSWORD, *sorted(self.issued)]

    def grants(self, kind: str) -> int:
        """How many token requests of ``grant_type`` ``kind`` the server answered."""
        records = self.server.log.for_endpoint("token")
        return sum(1 for r in records if r.form.get("grant_type") == kind)


@pytest.fixture
def v2(small_archive: FakeArchive) -> Iterator[V2Server]:
    """A token-protected server whose tokens live 2 s (so long runs refresh them) and which
    records every token it issues; responses are slowed so a run lasts a few seconds."""
    server = FakeNbiaServer(
        small_archive, users={USERNAME: PASSWORD}, token_lifetime=2.0, bandwidth=60_000
    )
    wrapped = V2Server(server)
    grant = server.tokens.grant

    def recording(form: dict[str, str]) -> TokenReply:
        reply = grant(form)
        for key in ("access_token", "refresh_token"):
            value = reply.body.get(key)
            if isinstance(value, str):
                wrapped.issued.add(value)
        return reply

    server.tokens.grant = recording  # type: ignore[method-assign,assignment]
    with run_in_thread(server):
        yield wrapped


@dataclass
class Run:
    """A finished bulkdl process: status, outputs, and every argv seen while it ran."""

    returncode: int
    stdout: bytes
    stderr: bytes
    cmdlines: list[bytes]

    @property
    def err(self) -> str:
        """stderr as text."""
        return self.stderr.decode("utf-8", "replace")


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without any BULKDL_* or TLS variable, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BULKDL_") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")
    }
    env.update(extra)
    return env


def run_bulkdl(*args: str, env: dict[str, str], timeout: float = 120) -> Run:
    """Run ``python -m bulkdl ARGS``, sampling /proc/<pid>/cmdline until it exits."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "bulkdl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    cmdlines: list[bytes] = []
    proc_file = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            seen = proc_file.read_bytes()
        except OSError:
            break
        if seen and seen not in cmdlines:
            cmdlines.append(seen)
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    return Run(proc.returncode, stdout, stderr, cmdlines)


def leaks(blob: bytes, secrets: Iterable[str]) -> list[str]:
    """The secrets found in ``blob``, as written or URL-encoded."""
    found = []
    for secret in secrets:
        forms = {secret, quote(secret, safe=""), quote_plus(secret)}
        if any(form.encode() in blob for form in forms):
            found.append(secret)
    return found


def assert_no_leaks(run: Run, out: Path | None, secrets: list[str]) -> None:
    """No secret in stdout, stderr, any argv seen, or any file under ``out``."""
    assert run.cmdlines, "the process was never seen running"
    assert leaks(run.stdout, secrets) == [], "stdout"
    assert leaks(run.stderr, secrets) == [], "stderr"
    for argv in run.cmdlines:
        assert leaks(argv, secrets) == [], f"argv {argv!r}"
    if out is not None:
        for path in sorted(p for p in out.rglob("*") if p.is_file()):
            assert leaks(path.read_bytes(), secrets) == [], str(path)


def manifest(tmp_path: Path, archive: FakeArchive) -> Path:
    """A .tcia manifest of every series of ``archive``."""
    path = tmp_path / "all.tcia"
    path.write_text(write_tcia([s.uid for s in archive.series]))
    return path


def credentials_file(tmp_path: Path, password: str = PASSWORD) -> Path:
    """A chmod-600 credentials file of key=value lines."""
    path = tmp_path / "nbia-credentials"
    path.write_text(f"username={USERNAME}\npassword={password}\n")
    path.chmod(0o600)
    return path


def plan_faults(v2: V2Server) -> tuple[str, str, str]:
    """A 401 on one series' first attempt, a 500 on another's, a 500 for ever on a third."""
    uids = [s.uid for s in v2.server.archive.series]
    v2.server.faults.script(uids[0], Fault.http_status(401, "Unauthorized"))
    v2.server.faults.script(uids[1], Fault.http_status(500))
    v2.server.faults.always(uids[2], Fault.http_status(500))
    return uids[0], uids[1], uids[2]


@pytest.mark.parametrize(
    ("flags", "via_file"),
    [
        (["-v"], False),
        (["-vv"], True),
        (["-q"], False),
        (["-vv", "--json"], False),
        (["--json"], True),
    ],
    ids=["v-env", "vv-file", "q-env", "vv-json-env", "json-file"],
)
def test_download_with_faults_leaks_no_secret(
    v2: V2Server, tmp_path: Path, flags: list[str], via_file: bool
) -> None:
    """A v2 download through a 401, a 500, token refreshes and a failed series writes the
    password and tokens nowhere: not stdout/stderr, not argv, not any file under DIR."""
    reauth, _, doomed = plan_faults(v2)
    out = tmp_path / "out"
    creds = (
        {"BULKDL_CREDENTIALS_FILE": str(credentials_file(tmp_path))}
        if via_file
        else {"BULKDL_USERNAME": USERNAME, "BULKDL_PASSWORD": PASSWORD}
    )
    result = run_bulkdl(
        "download",
        *flags,
        str(manifest(tmp_path, v2.server.archive)),
        "--out",
        str(out),
        "--api-url",
        v2.v2_url,
        "--concurrency",
        "2",
        "--retries",
        "1",
        "--no-progress",
        env=clean_env(**creds),
    )
    assert result.returncode == 1, result.err
    failures = (out / "failures.csv").read_text()
    assert doomed in failures and reauth not in failures
    assert (out / "metadata.csv").is_file() and (out / ".bulkdl" / "ledger.sqlite").is_file()
    # The secrets were really in play: sign-ins, a re-sign-in after the 401, token refreshes.
    assert v2.grants("password") >= 2 and v2.grants("refresh_token") >= 1
    assert len(v2.issued) >= 4
    assert all(r.authorization for r in v2.server.log.for_endpoint("getImage"))
    if "--json" in flags:
        events = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert events, "no JSON events"
    if "-vv" in flags:
        assert b"DEBUG" in result.stderr  # the most talkative level really ran
    assert_no_leaks(result, out, v2.secrets())


@pytest.mark.parametrize("fmt", ["csv", "json", "tcia"])
def test_query_leaks_no_secret(v2: V2Server, tmp_path: Path, fmt: str) -> None:
    """A v2 query at -vv prints rows and debug lines but never the password or a token."""
    result = run_bulkdl(
        "-vv",
        "query",
        "series",
        "--api-url",
        v2.v2_url,
        "--format",
        fmt,
        env=clean_env(BULKDL_USERNAME=USERNAME, BULKDL_PASSWORD=PASSWORD),
    )
    assert result.returncode == 0, result.err
    assert v2.server.archive.series[0].uid.encode() in result.stdout
    assert v2.issued and v2.grants("password") >= 1
    assert_no_leaks(result, None, v2.secrets())


def test_wrong_password_is_refused_without_echo(v2: V2Server, tmp_path: Path) -> None:
    """Refused credentials stop the run with one line naming the token endpoint, not the
    password tried; nothing under DIR holds it either."""
    out = tmp_path / "out"
    result = run_bulkdl(
        "-vv",
        "download",
        str(manifest(tmp_path, v2.server.archive)),
        "--out",
        str(out),
        "--api-url",
        v2.v2_url,
        env=clean_env(BULKDL_CREDENTIALS_FILE=str(credentials_file(tmp_path, WRONG_PASSWORD))),
    )
    assert result.returncode == 3, result.err
    assert "token endpoint refused the credentials (HTTP 401)" in result.err
    assert "Traceback" not in result.err
    assert v2.issued == set()
    assert_no_leaks(result, out if out.exists() else None, v2.secrets())


# --- user:password@ in the API URL ---------------------------------------------------------


def url_with_password(v2: V2Server) -> str:
    """The v2 URL with ``alice:PASSWORD@`` spliced in."""
    scheme, rest = v2.v2_url.split("://", 1)
    return f"{scheme}://{USERNAME}:{quote(PASSWORD, safe='')}@{rest}"


@pytest.mark.parametrize(
    ("command", "where"),
    [
        ("download", "flag"),
        ("download", "env"),
        ("download", "config"),
        ("query", "flag"),
        ("query", "env"),
    ],
)
def test_api_url_with_password_is_refused_everywhere(
    v2: V2Server, tmp_path: Path, command: str, where: str
) -> None:
    """user:password@ in --api-url, BULKDL_API_URL or a config file is refused (exit 2) before
    any request, naming its source and never repeating the password."""
    url = url_with_password(v2)
    out = tmp_path / "out"
    args = ["-vv", command]
    if command == "download":
        args += [str(manifest(tmp_path, v2.server.archive)), "--out", str(out)]
    env = clean_env()
    source = "--api-url"
    if where == "flag":
        args += ["--api-url", url]
    elif where == "env":
        env["BULKDL_API_URL"] = url
        source = "BULKDL_API_URL"
    else:
        config = tmp_path / "site.toml"
        config.write_text(f'[download]\napi-url = "{url}"\n')
        args += ["--config", str(config)]
        source = f"{config}:2"
    result = run_bulkdl(*args, env=env)
    assert result.returncode == 2, result.err
    last = result.err.strip().splitlines()[-1]
    assert last.startswith(f"bulkdl: error: {source}: api-url must not carry user:password@")
    assert "BULKDL_PASSWORD" in last and "Traceback" not in result.err
    assert v2.server.log.records == []
    if where == "flag":
        result.cmdlines = [b"(the user put the password on the command line themselves)"]
    assert_no_leaks(result, out if out.exists() else None, [PASSWORD])


def test_python_api_refuses_api_url_with_password(v2: V2Server, tmp_path: Path) -> None:
    """bulkdl.download(api_url='http://u:p@...') raises InputError without the password."""
    with pytest.raises(InputError) as caught:
        bulkdl.download(
            str(manifest(tmp_path, v2.server.archive)),
            out=tmp_path / "out",
            api_url=url_with_password(v2),
        )
    assert "user:password@" in str(caught.value)
    assert leaks(str(caught.value).encode(), [PASSWORD]) == []
    assert v2.server.log.records == []


# --- no credentials on the command line ----------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--password", PASSWORD, "query"],
        ["query", "--password", PASSWORD],
        ["download", "m.tcia", f"--password={PASSWORD}", "--out", "x"],
        ["download", "m.tcia", "--token", PASSWORD, "--out", "x"],
        ["query", "--username", USERNAME],
    ],
)
def test_credential_flags_are_rejected_by_argparse(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--password, --token, --username are argparse errors (exit 2) that do not echo the value."""
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err
    assert "credentials are never read from the command line" in err
    assert "BULKDL_PASSWORD" in err and PASSWORD not in err


def test_password_flag_rejected_by_real_cli(tmp_path: Path) -> None:
    """The real process refuses --password with exit 2, no traceback, no echo of the value."""
    result = run_bulkdl("query", "--password", PASSWORD, env=clean_env())
    assert result.returncode == 2
    assert "credentials are never read from the command line" in result.err
    assert leaks(result.stderr + result.stdout, [PASSWORD]) == []
    assert "Traceback" not in result.err


def test_help_offers_no_credentials_flag() -> None:
    """No sub-command's --help mentions a password, token or username flag."""
    texts = [build_parser().format_help()]
    sub = build_parser()._subparsers
    assert sub is not None
    for action in sub._group_actions:
        for choice in getattr(action, "choices", {}).values():
            texts.append(choice.format_help())
    for text in texts:
        for flag in ("--password", "--token", "--username", "--passwd"):
            assert flag not in text
