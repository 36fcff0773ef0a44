"""TLS verification and redirects over real loopback HTTPS, with bulkdl as a real subprocess.

Certificates are made by the ``openssl`` CLI in a temporary folder: a self-signed server
certificate, and a private CA with a server certificate it signed (a site's TLS-inspecting proxy).
The fake NBIA server's own aiohttp app is served behind an ``ssl.SSLContext``; small redirecting
apps sit in front of it to prove the redirect rules (https->http refused, same-host https followed,
a cap on hops, no Authorization header and no request body carried to another host).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web

from bulkdl.config import load_settings
from bulkdl.manifest import write_tcia
from bulkdl.sources.http import HttpSettings, ssl_context
from bulkdl.testing import FakeArchive, FakeNbiaServer, run_in_thread
from bulkdl.testing.app import make_app

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

USERNAME, PASSWORD = "alice", "tls-test-Secr3t"


# --- certificates --------------------------------------------------------------------------


@dataclass(frozen=True)
class Certs:
    """PEM files: a self-signed server certificate, and a CA with a server certificate."""

    self_signed: Path
    self_signed_key: Path
    ca: Path
    leaf: Path
    leaf_key: Path


def openssl(folder: Path, *args: str) -> None:
    """Run the openssl CLI in ``folder``; fail the test run with its stderr if it fails."""
    done = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """Certificates for localhost and 127.0.0.1, valid for two days, made once per session."""
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    san = "subjectAltName=DNS:localhost,IP:127.0.0.1"
    openssl(
        d,
        "req",
        "-x509",
        *ec,
        "-keyout",
        "self.key",
        "-out",
        "self.pem",
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        san,
    )
    openssl(
        d,
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=bulkdl test proxy CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    openssl(d, "req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=localhost")
    (d / "leaf.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage=serverAuth\n{san}\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n"
    )
    openssl(
        d,
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
    )
    return Certs(d / "self.pem", d / "self.key", d / "ca.pem", d / "leaf.pem", d / "leaf.key")


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server-side TLS context for one certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


# --- servers -------------------------------------------------------------------------------


class TlsNbiaServer(FakeNbiaServer):
    """The fake NBIA server's app behind TLS, optionally with extra routes in front of it."""

    def __init__(
        self,
        archive: FakeArchive,
        context: ssl.SSLContext,
        routes: list[web.RouteDef] | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__(archive, **kwargs)  # type: ignore[arg-type]
        self._context = context
        self._routes = routes or []

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen with TLS on ``host:port``."""
        app = make_app(self._state)
        app.add_routes(self._routes)
        runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=self._context).start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"https://{bound_host}:{bound_port}"


@contextmanager
def serve_app(app: web.Application, context: ssl.SSLContext) -> Iterator[str]:
    """Serve a plain aiohttp ``app`` over TLS on 127.0.0.1 in a thread; yields its root URL."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)

    async def start() -> str:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        return f"https://127.0.0.1:{runner.addresses[0][1]}"

    try:
        yield asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=30)
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def redirecting(to: Callable[[web.Request], str], status: int = 302) -> web.Application:
    """An app answering every request with ``status`` and ``Location: to(request)``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(status=status, headers={"Location": to(request)})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@pytest.fixture
def self_signed_server(small_archive: FakeArchive, certs: Certs) -> Iterator[TlsNbiaServer]:
    """The fake NBIA server on HTTPS with a self-signed certificate."""
    context = server_context(certs.self_signed, certs.self_signed_key)
    server = TlsNbiaServer(small_archive, context)
    with run_in_thread(server):
        yield server


async def moved(request: web.Request) -> web.StreamResponse:
    """308 from /moved/<rest> to /nbia-api/services/<rest> on the same host (query kept)."""
    target = "/nbia-api/services/" + request.match_info["tail"]
    if request.query_string:
        target += "?" + request.query_string
    return web.Response(status=308, headers={"Location": target})


@pytest.fixture
def ca_server(small_archive: FakeArchive, certs: Certs) -> Iterator[TlsNbiaServer]:
    """The fake NBIA server on HTTPS with a certificate from the private CA, plus a
    same-host ``/moved/`` route that 308-redirects into the API; v2 needs a token."""
    context = server_context(certs.leaf, certs.leaf_key)
    routes = [web.route("*", "/moved/{tail:.*}", moved)]
    server = TlsNbiaServer(small_archive, context, routes, users={USERNAME: PASSWORD})
    with run_in_thread(server):
        yield server


# --- running bulkdl ------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without BULKDL_* or SSL_CERT_* variables, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("BULKDL_") and k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")
    }
    env.update(extra)
    return env


def bulkdl(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bulkdl ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "bulkdl", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def download(
    server: FakeNbiaServer, tmp_path: Path, *flags: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Download the archive's first two series from ``server``'s v4 API into tmp_path/out."""
    manifest = tmp_path / "two.tcia"
    manifest.write_text(write_tcia([s.uid for s in server.archive.series[:2]]))
    out = tmp_path / "out"
    return bulkdl(
        "download",
        str(manifest),
        "--out",
        str(out),
        "--api-url",
        server.v4_url,
        "--no-progress",
        *flags,
        env=env,
    )


def placed(tmp_path: Path) -> int:
    """How many .dcm files the run placed."""
    return sum(1 for _ in (tmp_path / "out").rglob("*.dcm"))


def expected_images(server: FakeNbiaServer) -> int:
    """The image count of the archive's first two series."""
    return sum(len(s.instances) for s in server.archive.series[:2])


def one_error_line(stderr: str) -> str:
    """The single line of stderr, asserting there is exactly one and no traceback."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    print(lines[0])  # shown with -s: what a user reads
    return lines[0]


# --- verification is on by default --------------------------------------------------------


def test_default_download_refuses_self_signed_certificate(
    self_signed_server: TlsNbiaServer, tmp_path: Path
) -> None:
    """A default run against a self-signed server stops: exit 3, one line naming the
    certificate problem and the way to trust a CA, nothing fetched or placed."""
    result = download(self_signed_server, tmp_path)
    assert result.returncode == 3, result.stderr
    line = one_error_line(result.stderr)
    assert line.startswith(f"bulkdl: error: {self_signed_server.root_url}: TLS certificate ")
    assert "self-signed certificate" in line and "--ca-bundle" in line
    assert placed(tmp_path) == 0
    assert self_signed_server.log.records == []


def test_default_query_refuses_self_signed_certificate(
    self_signed_server: TlsNbiaServer,
) -> None:
    """``bulkdl query`` verifies certificates too: exit 3 and one line, no rows."""
    result = bulkdl("query", "collections", "--api-url", self_signed_server.v4_url)
    assert result.returncode == 3
    assert "TLS certificate verification failed" in one_error_line(result.stderr)
    assert result.stdout == ""


@pytest.mark.parametrize("how", ["flag", "toml", "env"])
def test_insecure_works_and_warns_every_run(
    self_signed_server: TlsNbiaServer, tmp_path: Path, how: str
) -> None:
    """--insecure, ``insecure = true`` or BULKDL_INSECURE=1 downloads from a self-signed server
    and prints the warning on stderr on every run, even with -q."""
    flags: list[str] = ["-q"]
    env = clean_env()
    if how == "flag":
        flags.append("--insecure")
    elif how == "toml":
        config = tmp_path / "site.toml"
        config.write_text("[download]\ninsecure = true\n")
        flags += ["--config", str(config)]
    else:
        env["BULKDL_INSECURE"] = "1"
    for _ in range(2):
        result = download(self_signed_server, tmp_path, *flags, env=env)
        assert result.returncode == 0, result.stderr
        assert "warning: TLS certificate verification is OFF" in result.stderr
    assert placed(tmp_path) == expected_images(self_signed_server)


def test_insecure_query_warns(self_signed_server: TlsNbiaServer) -> None:
    """``bulkdl query --insecure`` lists rows from a self-signed server, with the warning."""
    result = bulkdl("query", "collections", "--insecure", "--api-url", self_signed_server.v4_url)
    assert result.returncode == 0, result.stderr
    assert self_signed_server.archive.series[0].collection in result.stdout
    assert "warning: TLS certificate verification is OFF" in result.stderr


# --- a private CA --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flag", "BULKDL_CA_BUNDLE", "SSL_CERT_FILE", "toml"])
def test_ca_bundle_trusts_private_ca(
    ca_server: TlsNbiaServer, certs: Certs, tmp_path: Path, how: str
) -> None:
    """A CA bundle from --ca-bundle, BULKDL_CA_BUNDLE, the config file or OpenSSL's SSL_CERT_FILE
    makes a proxy-signed server work with verification on: no warning, every image placed."""
    flags: list[str] = []
    env = clean_env()
    if how == "flag":
        flags = ["--ca-bundle", str(certs.ca)]
    elif how == "toml":
        shutil.copy(certs.ca, tmp_path / "site-ca.pem")
        config = tmp_path / "site.toml"
        config.write_text('ca-bundle = "site-ca.pem"\n')  # relative to the config's folder
        flags = ["--config", str(config)]
    else:
        env[how] = str(certs.ca)
    result = download(ca_server, tmp_path, *flags, env=env)
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower()
    assert placed(tmp_path) == expected_images(ca_server)


def test_ca_bundle_without_it_fails_and_wrong_ca_fails(
    ca_server: TlsNbiaServer, certs: Certs, tmp_path: Path
) -> None:
    """The proxy-signed server fails without the CA, and with a bundle of another CA: the
    bundle adds trust, it does not switch verification off."""
    plain = download(ca_server, tmp_path)
    assert plain.returncode == 3
    assert "unable to get local issuer certificate" in one_error_line(plain.stderr)
    wrong = download(ca_server, tmp_path, "--ca-bundle", str(certs.self_signed))
    assert wrong.returncode == 3
    assert "TLS certificate verification failed" in one_error_line(wrong.stderr)
    assert placed(tmp_path) == 0


def test_bulkdl_ca_bundle_wins_over_ssl_cert_file(
    ca_server: TlsNbiaServer, certs: Certs, tmp_path: Path
) -> None:
    """BULKDL_CA_BUNDLE takes precedence over SSL_CERT_FILE, and --ca-bundle over both."""
    env = clean_env(SSL_CERT_FILE=str(certs.self_signed), BULKDL_CA_BUNDLE=str(certs.ca))
    assert download(ca_server, tmp_path, env=env).returncode == 0
    env = clean_env(BULKDL_CA_BUNDLE=str(certs.self_signed))
    assert download(ca_server, tmp_path, "--ca-bundle", str(certs.ca), env=env).returncode == 0


def test_ssl_cert_file_is_left_to_openssl(certs: Certs) -> None:
    """SSL_CERT_FILE is no ca_bundle: the connector gets aiohttp's verifying context (True),
    which OpenSSL has already filled from that file, rather than a second one read from it; the
    download trusting it is test_ca_bundle_trusts_private_ca[SSL_CERT_FILE]. bulkdl's own
    variable still makes a context of its own."""
    only_openssl = load_settings(flags={}, config_file=None, env={"SSL_CERT_FILE": str(certs.ca)})
    assert only_openssl.ca_bundle is None
    assert ssl_context(HttpSettings(ca_bundle=only_openssl.ca_bundle)) is True
    env = {"SSL_CERT_FILE": str(certs.self_signed), "BULKDL_CA_BUNDLE": str(certs.ca)}
    ours = load_settings(flags={}, config_file=None, env=env)
    assert ours.ca_bundle == certs.ca
    own = ssl_context(HttpSettings(ca_bundle=ours.ca_bundle))
    assert isinstance(own, ssl.SSLContext) and own.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("problem", ["missing", "not-pem"])
def test_unusable_ca_bundle_is_an_input_error(
    ca_server: TlsNbiaServer, tmp_path: Path, problem: str
) -> None:
    """A CA bundle that does not exist or holds no certificate is exit 2 naming the file."""
    bundle = tmp_path / "bundle.pem"
    if problem == "not-pem":
        bundle.write_text("this is not a certificate\n")
    result = download(ca_server, tmp_path, "--ca-bundle", str(bundle))
    assert result.returncode == 2
    line = one_error_line(result.stderr)
    assert str(bundle) in line
    assert ca_server.log.records == []


# --- redirects -----------------------------------------------------------------------------


def test_same_host_https_redirect_is_followed(
    ca_server: TlsNbiaServer, certs: Certs, tmp_path: Path
) -> None:
    """An API moved on the same https host (308) is followed: the download completes."""
    manifest = tmp_path / "two.tcia"
    manifest.write_text(write_tcia([s.uid for s in ca_server.archive.series[:2]]))
    result = bulkdl(
        "download",
        str(manifest),
        "--out",
        str(tmp_path / "out"),
        "--no-progress",
        "--api-url",
        ca_server.root_url + "/moved/v4/",
        "--ca-bundle",
        str(certs.ca),
    )
    assert result.returncode == 0, result.stderr
    assert placed(tmp_path) == expected_images(ca_server)
    assert ca_server.log.count("getImage") == 2


def test_https_to_http_redirect_is_refused(
    nbia_server: FakeNbiaServer, certs: Certs, tmp_path: Path
) -> None:
    """An https API redirecting to plain http is refused with one line naming both URLs; the
    http server is never asked."""
    app = redirecting(lambda r: nbia_server.root_url + r.path_qs)
    with serve_app(app, server_context(certs.leaf, certs.leaf_key)) as https_url:
        result = bulkdl(
            "query",
            "series",
            "--collection",
            "x",
            "--api-url",
            https_url + "/nbia-api/services/v4/",
            "--ca-bundle",
            str(certs.ca),
        )
    assert result.returncode == 3
    line = one_error_line(result.stderr)
    assert f"refused redirect from {https_url}/nbia-api/services/v4/getSeries" in line
    assert f"to {nbia_server.root_url}/nbia-api/services/v4/getSeries" in line
    assert "plain HTTP" in line
    assert nbia_server.log.records == []


def test_redirect_loop_is_capped(certs: Certs) -> None:
    """A server that redirects for ever is given up after 5 hops with one clear line."""
    app = redirecting(lambda r: r.path_qs)
    with serve_app(app, server_context(certs.leaf, certs.leaf_key)) as https_url:
        result = bulkdl(
            "query",
            "collections",
            "--api-url",
            https_url + "/nbia-api/services/v4/",
            "--ca-bundle",
            str(certs.ca),
        )
    assert result.returncode == 3
    assert "more than 5 redirects" in one_error_line(result.stderr)


def test_authorization_is_not_sent_to_another_host(
    certs: Certs, small_archive: FakeArchive
) -> None:
    """A v2 request redirected to another host arrives there without the Authorization header
    (so that host refuses it and the run stops), though the token was got and sent at home."""
    context = server_context(certs.leaf, certs.leaf_key)
    other = TlsNbiaServer(small_archive, context, users={USERNAME: PASSWORD})
    with run_in_thread(other):
        elsewhere = "https://localhost:" + other.root_url.rsplit(":", 1)[1]
        seen: list[bool] = []

        async def away(request: web.Request) -> web.StreamResponse:
            seen.append("Authorization" in request.headers)
            rest = request.path_qs.removeprefix("/away/")
            return web.Response(
                status=302, headers={"Location": f"{elsewhere}/nbia-api/services/{rest}"}
            )

        home = TlsNbiaServer(
            small_archive,
            context,
            [web.route("*", "/away/{tail:.*}", away)],
            users={USERNAME: PASSWORD},
        )
        with run_in_thread(home):
            result = bulkdl(
                "query",
                "series",
                "--collection",
                "x",
                "--api-url",
                home.root_url + "/away/v2/",
                "--ca-bundle",
                str(certs.ca),
                env=clean_env(BULKDL_USERNAME=USERNAME, BULKDL_PASSWORD=PASSWORD),
            )
        assert result.returncode == 3, result.stderr
        assert "HTTP 401" in one_error_line(result.stderr)
        asked = other.log.for_endpoint("getSeries")
        assert asked and not any(r.authorization for r in asked)
        assert seen and all(seen), "the home host got the Authorization header"
        assert home.log.for_endpoint("token") and not other.log.for_endpoint("token")


def test_request_body_is_not_resent_to_another_host(
    certs: Certs, small_archive: FakeArchive
) -> None:
    """A token endpoint that 307-redirects to another host does not get the password form
    re-sent there: the run stops with one line saying why, and the other host hears nothing."""
    context = server_context(certs.leaf, certs.leaf_key)
    other = TlsNbiaServer(small_archive, context, users={USERNAME: PASSWORD})
    with run_in_thread(other):
        target = "https://localhost:" + other.root_url.rsplit(":", 1)[1] + "/nbia-api/oauth/token"
        with serve_app(redirecting(lambda r: target, status=307), context) as front:
            result = bulkdl(
                "query",
                "series",
                "--collection",
                "x",
                "--api-url",
                front + "/nbia-api/services/v2/",
                "--ca-bundle",
                str(certs.ca),
                env=clean_env(BULKDL_USERNAME=USERNAME, BULKDL_PASSWORD=PASSWORD),
            )
        assert result.returncode == 3
        line = one_error_line(result.stderr)
        assert "re-send the request body to another host" in line
        assert PASSWORD not in result.stderr
        assert other.log.records == []
