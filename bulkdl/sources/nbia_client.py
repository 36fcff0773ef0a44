"""NbiaClient: the thin async layer over the pure NBIA builders/parsers and the HTTP client.

It builds each request with :mod:`bulkdl.sources.nbia`, sends it through :class:`HttpClient`
(with bearer headers when :class:`TokenAuth` is set), retries idempotent metadata calls with the
:class:`RetryPolicy` while honouring Retry-After and one :class:`HostBackoff` shared by every
worker on the host, and parses the answer into records. Series downloads (``open_image``) are not
retried here: a broken ZIP restarts the whole series, so the caller retries. Does network I/O.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from datetime import date
from functools import partial
from typing import TypeVar, cast

import anyio

from bulkdl.errors import (
    AuthError,
    RejectedError,
    ResponseError,
    TransientError,
    UnknownSeriesError,
)
from bulkdl.records import Patient, Series, SeriesSize, Study
from bulkdl.retry import HOST_WIDE_STATUSES, HostBackoff, RetryPolicy
from bulkdl.sources import nbia
from bulkdl.sources.auth import Credentials, TokenAuth
from bulkdl.sources.http import HttpClient, HttpResponse, HttpSettings, StreamResponse
from bulkdl.sources.nbia import ApiRequest, ParamValue, Row, SeriesQuery, Table

log = logging.getLogger(__name__)

_JSON: dict[str, ParamValue] = {"format": "json"}
T = TypeVar("T")


class NbiaClient:
    """Typed calls to one NBIA API base URL (v4 by default; v1/v2/un-versioned work too).

    ``http`` must be open for the client's lifetime. Methods raise :class:`TransientError`
    once retries are spent, :class:`UnknownSeriesError` when a series endpoint answers 400,
    :class:`RejectedError` for other refusals, :class:`AuthError` when credentials are missing or
    refused, and :class:`ResponseError` for a body that does not parse.
    """

    def __init__(
        self,
        http: HttpClient,
        base_url: str = nbia.DEFAULT_BASE_URL,
        *,
        auth: TokenAuth | None = None,
        policy: RetryPolicy | None = None,
        backoff: HostBackoff | None = None,
        metadata_batch: int = nbia.DEFAULT_METADATA_BATCH,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.base_url = nbia.normalize_base_url(base_url)
        self.version = nbia.api_version(self.base_url)
        self._http = http
        self._auth = auth
        self.policy = policy or RetryPolicy()
        self.backoff = backoff or HostBackoff(rand=rand)
        self.metadata_batch = metadata_batch
        self._rand = rand
        self._clock = clock
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"NbiaClient({self.base_url!r}, auth={self._auth is not None})"

    # ------------------------------------------------------------------ plumbing

    def _request(self, endpoint: str, params: Mapping[str, ParamValue]) -> ApiRequest:
        return nbia.build_request(self.base_url, endpoint, params)

    async def _hold_off(self) -> None:
        wait = self.backoff.wait_time(self._clock())
        if wait > 0:
            log.info("host asked us to slow down; waiting %.1f s", wait)
            await self._sleep(wait)

    async def _auth_headers(self) -> dict[str, str]:
        return await self._auth.headers() if self._auth is not None else {}

    def _note_transient(self, error: TransientError) -> None:
        if error.status in HOST_WIDE_STATUSES:
            self.backoff.penalize(self._clock(), error.retry_after)

    async def _send_once(self, req: ApiRequest) -> HttpResponse:
        """One send, re-authenticating once if the endpoint refuses our token."""
        await self._hold_off()
        headers = await self._auth_headers()
        try:
            return await self._http.request(req.method, req.url, req.params, req.form, headers)
        except AuthError:
            if self._auth is None:
                raise
            await self._auth.reauthenticate(headers.get("Authorization", "")[7:] or None)
            headers = await self._auth_headers()
            return await self._http.request(req.method, req.url, req.params, req.form, headers)

    async def _send(
        self,
        req: ApiRequest,
        series_uid: str | None = None,
        parse: Callable[[HttpResponse], T] | None = None,
    ) -> T:
        """Send an idempotent request with retries and return ``parse`` of the answer (the
        answer itself without ``parse``); 400 on a series call -> UnknownSeriesError.

        A 200 whose body ``parse`` refuses (a truncated body, an HTML page from a proxy) is
        retried like a 5xx: metadata calls are idempotent and such bodies are usually passing
        trouble. What is left after the last attempt is raised.
        """
        attempt = 1
        while True:
            try:
                resp = await self._send_once(req)
                try:
                    result = parse(resp) if parse is not None else cast(T, resp)
                except ResponseError as exc:
                    # A body over the size guard is raised above, unretried: it would recur.
                    raise _Unparsable(exc) from exc
            except (TransientError, _Unparsable) as exc:
                if isinstance(exc, TransientError):
                    self._note_transient(exc)
                    retry = self.policy.should_retry(attempt, exc)
                else:
                    retry = attempt < self.policy.attempts
                if not retry and isinstance(exc, _Unparsable):
                    raise exc.error from exc.error.__cause__
                if not retry:
                    raise
                delay = self.policy.delay(attempt, exc, self._rand)
                log.info("%s failed (%s); retry %d in %.2f s", req.endpoint, exc, attempt, delay)
                await self._sleep(delay)
                attempt += 1
                continue
            except RejectedError as exc:
                unknown = _unknown_series(exc, series_uid)
                if unknown is exc:
                    raise
                raise unknown from exc
            self.backoff.reset()
            return result

    async def _rows(
        self, endpoint: str, params: Mapping[str, ParamValue], series_uid: str | None = None
    ) -> list[Row]:
        req = self._request(endpoint, params)
        return await self._send(req, series_uid, partial(_parse, req))

    # ------------------------------------------------------------------ value lists

    async def collections(self) -> list[str]:
        """Every collection name the archive lists."""
        return nbia.column_values(await self._rows("getCollectionValues", _JSON), "Collection")

    async def modalities(
        self, collection: str | None = None, body_part: str | None = None
    ) -> list[str]:
        """The modalities, optionally within a collection and/or body part."""
        params = {"Collection": collection, "BodyPartExamined": body_part, **_JSON}
        return nbia.column_values(await self._rows("getModalityValues", params), "Modality")

    async def body_parts(
        self, collection: str | None = None, modality: str | None = None
    ) -> list[str]:
        """The body parts examined, optionally within a collection and/or modality."""
        params = {"Collection": collection, "Modality": modality, **_JSON}
        rows = await self._rows("getBodyPartValues", params)
        return nbia.column_values(rows, "BodyPartExamined")

    async def manufacturers(
        self,
        collection: str | None = None,
        modality: str | None = None,
        body_part: str | None = None,
    ) -> list[str]:
        """The equipment manufacturers, optionally filtered."""
        params = {
            "Collection": collection,
            "Modality": modality,
            "BodyPartExamined": body_part,
            **_JSON,
        }
        return nbia.column_values(await self._rows("getManufacturerValues", params), "Manufacturer")

    # ------------------------------------------------------------------ patients, studies

    async def patients(
        self, collection: str | None = None, patient_id: str | None = None
    ) -> list[Patient]:
        """Patients, optionally of one collection and/or with one ID."""
        params = {"Collection": collection, "PatientId": patient_id, **_JSON}
        rows = await self._rows("getPatient", params)
        return [nbia.patient_from_row(r) for r in rows]

    async def patients_by_modality(self, collection: str, modality: str) -> list[str]:
        """IDs of the collection's patients with at least one series of ``modality``."""
        params = {"Collection": collection, "Modality": modality, **_JSON}
        rows = await self._rows("getPatientByCollectionAndModality", params)
        return nbia.column_values(rows, "PatientID")

    async def new_patients(self, collection: str, since: date) -> list[Patient]:
        """Patients added to ``collection`` on or after ``since``."""
        params = {"Collection": collection, "fromDate": since, **_JSON}
        rows = await self._rows("NewPatientsInCollection", params)
        return [nbia.patient_from_row(r) for r in rows]

    async def patient_studies(
        self, collection: str, patient_id: str | None = None, study_uid: str | None = None
    ) -> list[Study]:
        """Studies of a collection, optionally of one patient and/or one study UID."""
        params = {
            "Collection": collection,
            "PatientID": patient_id,
            "StudyInstanceUID": study_uid,
            **_JSON,
        }
        rows = await self._rows("getPatientStudy", params)
        return [nbia.study_from_row(r) for r in rows]

    async def new_studies(
        self, collection: str, since: date, patient_id: str | None = None
    ) -> list[Study]:
        """Studies added to ``collection`` (optionally one patient's) on or after ``since``."""
        params: dict[str, ParamValue] = {
            "Collection": collection,
            "PatientID": patient_id,
            "fromDate": since,
            **_JSON,
        }
        rows = await self._rows("NewStudiesInPatientCollection", params)
        return [nbia.study_from_row(r) for r in rows]

    # ------------------------------------------------------------------ series

    async def series(self, query: SeriesQuery) -> list[Series]:
        """The series matching ``query`` (every filter exact, case-insensitive)."""
        params = {**query.to_params(), **_JSON}
        rows = await self._rows("getSeries", params, query.series_uid)
        return nbia.series_from_rows(rows)

    async def updated_series(self, since: date) -> list[Series]:
        """Series updated on or after ``since``."""
        rows = await self._rows("getUpdatedSeries", {"fromDate": since, **_JSON})
        return nbia.series_from_rows(rows)

    async def series_size(self, uid: str) -> SeriesSize:
        """Image count and total bytes of one series (slow on the server; prefer FileSize)."""
        rows = await self._rows("getSeriesSize", {"SeriesInstanceUID": uid, **_JSON}, uid)
        return nbia.series_size_from_rows(uid, rows)

    async def sop_instance_uids(self, uid: str) -> list[str]:
        """The SOPInstanceUIDs of one series."""
        rows = await self._rows("getSOPInstanceUIDs", {"SeriesInstanceUID": uid, **_JSON}, uid)
        return nbia.sop_instance_uids(rows)

    async def series_metadata(self, uids: Iterable[str]) -> tuple[list[Series], list[str]]:
        """Metadata of many series through POST getSeriesMetadata, in batches.

        Returns (found, missing): found in the order asked, missing the UIDs the archive did
        not return (unknown, or not ours to see). The batches are asked for one at a time, each
        while the rows of the one before become records in a worker thread: the server's time
        and ours overlap (200 batches for a 200,000-series manifest).
        """
        wanted = list(dict.fromkeys(uids))
        by_uid: dict[str, Series] = {}
        send, receive = anyio.create_memory_object_stream[tuple[Table | list[Row], str]](1)

        async def ask() -> None:
            async with send:
                for batch in nbia.metadata_batches(wanted, self.metadata_batch):
                    form = {"list": nbia.metadata_form_list(batch)}
                    req = self._request("getSeriesMetadata", form)
                    answer = await self._send(req, None, partial(_parse_answer, req))
                    await send.send((answer, req.display_url))

        try:
            async with anyio.create_task_group() as tg, receive:
                tg.start_soon(ask)
                async for answer, url in receive:
                    convert = nbia.series_from_answer
                    records = await anyio.to_thread.run_sync(convert, answer, url)
                    for record in records:
                        by_uid.setdefault(record.SeriesInstanceUID, record)
        except BaseExceptionGroup as group:
            error = _first_error(group)
            raise error from error.__cause__
        found = [by_uid[u] for u in wanted if u in by_uid]
        missing = [u for u in wanted if u not in by_uid]
        return found, missing

    # ------------------------------------------------------------------ Source protocol

    async def resolve(self, uids: Sequence[str]) -> tuple[list[Series], list[str]]:
        """Source protocol: :meth:`series_metadata`."""
        return await self.series_metadata(uids)

    async def search(self, query: SeriesQuery) -> list[Series]:
        """Source protocol: :meth:`series`."""
        return await self.series(query)

    # ------------------------------------------------------------------ downloads

    def open_image(
        self, uid: str, *, new_file_names: bool = False, include_md5: bool = True
    ) -> AbstractAsyncContextManager[StreamResponse]:
        """Open getImage's ZIP stream for one series (no retries: the caller retries the series).

        Use as ``async with client.open_image(uid) as resp: async for b in resp.chunks(): ...``.
        Raises :class:`UnknownSeriesError` on 400, :class:`TransientError` on 429/5xx/network
        failures (a 429/503 also pauses every worker on the host).
        """
        params: dict[str, ParamValue] = {
            "SeriesInstanceUID": uid,
            "NewFileNames": new_file_names,
            "IncludeMD5": include_md5,
        }
        return self._open(self._request("getImage", params), uid)

    def open_image_with_md5(self, uid: str) -> AbstractAsyncContextManager[StreamResponse]:
        """Open getImageWithMD5Hash's ZIP stream (no LICENSE, with md5hashes.csv)."""
        return self._open(self._request("getImageWithMD5Hash", {"SeriesInstanceUID": uid}), uid)

    @asynccontextmanager
    async def _open(self, req: ApiRequest, uid: str) -> AsyncIterator[StreamResponse]:
        async with AsyncExitStack() as stack:
            resp = await self._enter_stream(stack, req, uid)
            yield resp

    async def _enter_stream(
        self, stack: AsyncExitStack, req: ApiRequest, uid: str
    ) -> StreamResponse:
        await self._hold_off()
        reauthed = False
        while True:
            headers = await self._auth_headers()
            try:
                resp = await stack.enter_async_context(
                    self._http.stream(req.method, req.url, req.params, headers)
                )
                # The host answered: end the streak of 429/503s, as a metadata success does.
                # Without this, downloads (nearly all requests of a run) never reset it, and
                # scattered 503s over hours grow the host-wide pause towards its 5-minute cap.
                self.backoff.reset()
                return resp
            except AuthError:
                if self._auth is None or reauthed:
                    raise
                reauthed = True
                await self._auth.reauthenticate(headers.get("Authorization", "")[7:] or None)
            except TransientError as exc:
                self._note_transient(exc)
                raise
            except RejectedError as exc:
                unknown = _unknown_series(exc, uid)
                if unknown is exc:
                    raise
                raise unknown from exc


class _Unparsable(Exception):
    """A 200 whose body did not parse (carrying the ResponseError), inside the retry loop."""

    def __init__(self, error: ResponseError) -> None:
        super().__init__(str(error))
        self.error = error


def _parse(req: ApiRequest, resp: HttpResponse) -> list[Row]:
    return nbia.parse_rows(resp.body, resp.content_type, req.display_url)


def _parse_answer(req: ApiRequest, resp: HttpResponse) -> Table | list[Row]:
    return nbia.parse_answer(resp.body, resp.content_type, req.display_url)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stopped a task group: the other tasks were only cancelled because of it."""
    cancelled = anyio.get_cancelled_exc_class()
    leaves = [e for e in group.exceptions if not isinstance(e, cancelled)]
    return leaves[0] if leaves else group.exceptions[0]


def _unknown_series(exc: RejectedError, uid: str | None) -> RejectedError:
    """400 on a call about one series means the server does not know it (or will not say)."""
    if uid is None or exc.status != 400 or isinstance(exc, UnknownSeriesError):
        return exc
    return UnknownSeriesError(
        f"unknown or inaccessible series {uid}: {exc}", url=exc.url, status=exc.status
    )


@asynccontextmanager
async def open_client(
    base_url: str,
    *,
    settings: HttpSettings | None = None,
    credentials: Credentials | None = None,
) -> AsyncIterator[NbiaClient]:
    """One run's NbiaClient over one HTTP session, with token auth when ``credentials`` are given.

    v2 and the un-versioned endpoints need credentials; v1 and v4 work anonymously.
    """
    async with HttpClient(settings or HttpSettings()) as http:
        auth = TokenAuth(http, base_url, credentials) if credentials is not None else None
        yield NbiaClient(http, base_url, auth=auth)
