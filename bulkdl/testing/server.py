"""Running the fake NBIA server: in the caller's event loop, on a thread of its own, or forever.

:class:`FakeNbiaServer` serves a :class:`FakeArchive` on 127.0.0.1 (port 0 picks a free one) and
exposes its request log and fault plan to tests. :func:`run_in_thread` runs it on a private event
loop in a daemon thread, for synchronous tests and for clients in another process.
:func:`serve_forever` is what ``bulkdl serve-fake`` calls: build the archive, serve, report the URL
through ``on_ready``; it prints nothing itself. Does socket I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType

from aiohttp import web

from bulkdl.testing.app import ServerState, make_app
from bulkdl.testing.archive import ArchiveSpec, FakeArchive
from bulkdl.testing.auth import TokenStore
from bulkdl.testing.faults import FaultPlan
from bulkdl.testing.reqlog import RequestLog
from bulkdl.testing.zips import ZipCache


class FakeNbiaServer:
    """An NBIA-compatible HTTP server over a synthetic archive, for tests, the demo and benchmarks.

    ``bandwidth`` caps each response at that many bytes/s; ``first_byte_delay`` delays every NBIA
    answer by that many seconds (a distant server); ``token_lifetime`` is the access token's
    ``expires_in``; ``users`` maps user names to passwords (default: ``nbia_guest`` with an empty
    password); ``token_required`` lists the API versions that demand a bearer token.
    """

    def __init__(
        self,
        archive: FakeArchive,
        *,
        faults: FaultPlan | None = None,
        bandwidth: float | None = None,
        first_byte_delay: float = 0.0,
        users: Mapping[str, str] | None = None,
        token_lifetime: float = 300.0,
        token_required: tuple[str, ...] = ("v2",),
        zip_cache_dir: Path | None = None,
        chunk_size: int = 512 * 1024,
    ) -> None:
        if zip_cache_dir is None and archive.root is not None:
            zip_cache_dir = archive.root / "zips"
        self._state = ServerState(
            archive=archive,
            zip_cache=ZipCache(archive, zip_cache_dir) if zip_cache_dir is not None else None,
            faults=faults if faults is not None else FaultPlan(),
            tokens=TokenStore(users, expires_in=token_lifetime),
            bandwidth=bandwidth,
            first_byte_delay=first_byte_delay,
            chunk_size=chunk_size,
            token_required=frozenset(token_required),
        )
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def archive(self) -> FakeArchive:
        """The archive being served."""
        return self._state.archive

    @property
    def log(self) -> RequestLog:
        """What the server has been asked."""
        return self._state.log

    @property
    def faults(self) -> FaultPlan:
        """The fault plan consulted on every image request."""
        return self._state.faults

    @property
    def tokens(self) -> TokenStore:
        """The token store (users, lifetimes)."""
        return self._state.tokens

    @property
    def bandwidth(self) -> float | None:
        """The per-response bandwidth cap in bytes/s (None: unlimited); settable."""
        return self._state.bandwidth

    @bandwidth.setter
    def bandwidth(self, value: float | None) -> None:
        self._state.bandwidth = value

    @property
    def first_byte_delay(self) -> float:
        """Seconds before every NBIA answer; settable."""
        return self._state.first_byte_delay

    @first_byte_delay.setter
    def first_byte_delay(self, value: float) -> None:
        self._state.first_byte_delay = value

    @property
    def root_url(self) -> str:
        """``http://HOST:PORT``. Raises RuntimeError before :meth:`start`."""
        if self._url is None:
            raise RuntimeError("the server is not started")
        return self._url

    @property
    def v4_url(self) -> str:
        """The v4 API base, ending with a slash."""
        return self.root_url + "/nbia-api/services/v4/"

    def reset_log(self) -> None:
        """Forget every request recorded so far."""
        self._state.log.reset()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0: a free port). Raises OSError if the port is taken."""
        runner = web.AppRunner(make_app(self._state), shutdown_timeout=1.0, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        self._url = f"http://{bound_host}:{bound_port}"

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeNbiaServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


@contextlib.contextmanager
def run_in_thread(
    server: FakeNbiaServer, host: str = "127.0.0.1", port: int = 0
) -> Iterator[FakeNbiaServer]:
    """Run ``server`` on its own event loop in a daemon thread while the context is open."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fake-nbia", daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(server.start(host, port), loop).result(timeout=30)
        try:
            yield server
        finally:
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


async def serve_forever(
    spec: ArchiveSpec,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    cache_dir: Path | str,
    faults_file: Path | str | None = None,
    bandwidth: float | None = None,
    first_byte_delay: float = 0.0,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Build (or load) the archive for ``spec``, serve it until cancelled, report the root URL.

    Raises OSError (port taken, cache not writable) or ValueError (bad faults file).
    """
    archive = await asyncio.to_thread(FakeArchive.build, spec, Path(cache_dir))
    faults = FaultPlan.load(faults_file) if faults_file is not None else None
    server = FakeNbiaServer(
        archive, faults=faults, bandwidth=bandwidth, first_byte_delay=first_byte_delay
    )
    await server.start(host, port)
    try:
        if on_ready is not None:
            on_ready(server.root_url)
        await asyncio.Event().wait()
    finally:
        await server.stop()
