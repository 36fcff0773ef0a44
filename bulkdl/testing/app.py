"""The aiohttp application of the fake NBIA server: routes, NBIA's strictness, ZIPs, tokens, admin.

Routes: ``/nbia-api/services/{v1,v2,v4}/<endpoint>`` and the un-versioned
``/nbia-api/services/<endpoint>``; the token and logout routes; and admin routes under ``/_fake/``
(log, faults, reset), which are outside ``/nbia-api/`` so NBIA's rules never apply to them.
Strictness follows ``nbia-api.md``: an unlisted parameter or a missing required one is a 400, an
unknown series is a 400, an empty result is a 200 with an empty body. ZIPs are streamed chunked
from the :class:`ZipCache`, with the :class:`FaultPlan`'s fault for that attempt. Does socket I/O.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Middleware

from bulkdl.testing.archive import FakeArchive, SeriesData
from bulkdl.testing.auth import TokenStore
from bulkdl.testing.endpoints import ALIASES, ENDPOINTS, Endpoint, invalid_parameter_message
from bulkdl.testing.faults import HTML_ERROR_PAGE, Fault, FaultKind, FaultPlan
from bulkdl.testing.queries import Queries, QueryError, parse_mdy
from bulkdl.testing.render import FORMATS, legacy_names, render
from bulkdl.testing.reqlog import RequestLog, RequestRecord, mask_secrets
from bulkdl.testing.streaming import reset_connection, stall, stream_bytes, stream_file
from bulkdl.testing.zips import ZipCache, ZipVariant

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
NOT_FOUND_SERIES = "Error: No series found for the given SeriesInstanceUID."
__all__ = ["HTML_ERROR_PAGE", "ServerState", "make_app"]


@dataclass(slots=True)
class ServerState:
    """Everything the handlers share: the archive, its indexes and caches, faults, log, tokens."""

    archive: FakeArchive
    zip_cache: ZipCache | None
    faults: FaultPlan = field(default_factory=FaultPlan)
    log: RequestLog = field(default_factory=RequestLog)
    tokens: TokenStore = field(default_factory=TokenStore)
    bandwidth: float | None = None
    first_byte_delay: float = 0.0
    chunk_size: int = 512 * 1024
    token_required: frozenset[str] = frozenset({"v2"})
    queries: Queries | None = None


class _Reject(Exception):
    """A request NBIA would refuse: answer ``status`` with a short text body."""

    def __init__(self, status: int, text: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = dict(headers or {})


def make_app(state: ServerState) -> web.Application:
    """The aiohttp application serving ``state``."""
    if state.queries is None:
        state.queries = Queries(state.archive)
    app = web.Application(middlewares=[_log_middleware(state)])
    routes = [
        web.post("/nbia-api/oauth/token", _token(state)),
        web.post("/nbia-api/services/oauth/token", _token(state)),
        web.post("/nbia-api/logout", _logout(state)),
        web.route("*", "/nbia-api/services/{version:v[0-9]+}/{endpoint}", _nbia(state)),
        web.route("*", "/nbia-api/services/{endpoint}", _nbia(state)),
        web.get("/_fake/log", _admin_log(state)),
        web.get("/_fake/faults", _admin_get_faults(state)),
        web.post("/_fake/faults", _admin_set_faults(state)),
        web.post("/_fake/reset", _admin_reset(state)),
    ]
    app.add_routes(routes)
    return app


def _log_middleware(state: ServerState) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/nbia-api/"):
            return await handler(request)
        form: dict[str, str] = {}
        if request.method == "POST" and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        if state.first_byte_delay:
            await asyncio.sleep(state.first_byte_delay)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            state.log.add(
                RequestRecord(
                    time=time.time(),
                    method=request.method,
                    path=request.path,
                    version=request.match_info.get("version", ""),
                    endpoint=request.match_info.get("endpoint", request.path.rsplit("/", 1)[-1]),
                    query={k: request.query[k] for k in request.query},
                    form=mask_secrets(form),
                    status=status,
                    authorization="Authorization" in request.headers,
                )
            )

    return middleware


def _text(status: int, text: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", headers=headers)


def _token(state: ServerState) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        reply = state.tokens.grant(form)
        return web.json_response(reply.body, status=reply.status)

    return handler


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _logout(state: ServerState) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        token = _bearer(request)
        if token is not None:
            state.tokens.revoke(token)
        return _text(200, "You have successfully logged out.")

    return handler


def _nbia(state: ServerState) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        version = request.match_info.get("version", "")
        name = ALIASES.get(request.match_info["endpoint"], request.match_info["endpoint"])
        endpoint = ENDPOINTS.get(name)
        if version not in ("", "v1", "v2", "v4") or endpoint is None:
            raise web.HTTPNotFound(text="Not Found")
        if request.method != endpoint.method:
            raise web.HTTPMethodNotAllowed(request.method, [endpoint.method])
        token = _bearer(request)
        if (token is not None and not state.tokens.valid(token)) or (
            token is None and version in state.token_required
        ):
            return _text(401, "Unauthorized", {"WWW-Authenticate": 'Bearer realm="nbia"'})
        try:
            params = await _params(request, endpoint)
            return await _answer(state, request, name, endpoint, version, params)
        except _Reject as reject:
            return _text(reject.status, reject.text, reject.headers)
        except QueryError as exc:
            return _text(400, str(exc))

    return handler


async def _params(request: web.Request, endpoint: Endpoint) -> dict[str, str]:
    """The request's parameters (query, and form for POST), checked against the endpoint's list."""
    pairs = list(request.query.items())
    if endpoint.method == "POST":
        pairs += [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
    params: dict[str, str] = {}
    for key, value in pairs:
        if key not in endpoint.params:
            raise _Reject(400, invalid_parameter_message(key, endpoint))
        params.setdefault(key, value)
    for key in endpoint.required:
        if not params.get(key):
            raise _Reject(400, f"Error: {key} is required.")
    return params


def _series(state: ServerState, uid: str) -> SeriesData:
    series = state.archive.lookup(uid)
    if series is None:
        raise _Reject(400, NOT_FOUND_SERIES)
    return series


async def _answer(
    state: ServerState,
    request: web.Request,
    name: str,
    endpoint: Endpoint,
    version: str,
    params: dict[str, str],
) -> web.StreamResponse:
    assert state.queries is not None
    q = state.queries
    filters = {k: v for k, v in params.items() if k not in ("format", "fromDate", "list")}
    if name == "getImage":
        variant = ZipVariant(
            new_file_names=params.get("NewFileNames", "").lower() == "yes",
            include_md5=params.get("IncludeMD5", "").lower() == "yes",
        )
        return await _zip(state, request, _series(state, params["SeriesInstanceUID"]), variant)
    if name == "getImageWithMD5Hash":
        variant = ZipVariant(include_md5=True, license=False)
        return await _zip(state, request, _series(state, params["SeriesInstanceUID"]), variant)
    if name == "getSingleImage":
        return await _single(state, request, params)
    columns = endpoint.columns
    fmt = params.get("format", "csv" if name == "getSeriesMetadata" else "json").lower()
    if fmt not in FORMATS:
        raise _Reject(400, f"Invalid format: '{fmt}'. Allowed formats are: [{', '.join(FORMATS)}]")
    if name in (
        "getCollectionValues",
        "getModalityValues",
        "getBodyPartValues",
        "getManufacturerValues",
    ):
        rows = q.values(columns[0], filters)
    elif name == "getPatient":
        rows = q.patients(filters)
    elif name == "NewPatientsInCollection":
        rows = q.patients(filters, parse_mdy(params["fromDate"]))
    elif name == "getPatientByCollectionAndModality":
        rows = q.patients_by_modality(params["Collection"], params["Modality"])
    elif name == "getPatientStudy":
        rows = q.studies(filters)
    elif name == "NewStudiesInPatientCollection":
        rows = q.studies(filters, parse_mdy(params["fromDate"]))
    elif name == "getSeries":
        rows = q.series(filters)
    elif name == "getUpdatedSeries":
        rows = q.updated_series(parse_mdy(params["fromDate"]))
    elif name == "getSeriesSize":
        rows = q.series_size(_series(state, params["SeriesInstanceUID"]))
    elif name == "getSOPInstanceUIDs":
        series = _series(state, params["SeriesInstanceUID"])
        rows = [{"SOPInstanceUID": i.sop_uid} for i in series.instances]
    else:  # getSeriesMetadata
        rows = q.metadata(u.strip() for u in params["list"].split(",") if u.strip())
    names: list[str] = list(columns)
    if version in ("v1", "v2"):
        names, rows = legacy_names(columns, rows)
    body, content_type = render(rows, names, fmt)
    fault = state.faults.next_endpoint_fault(name)
    if fault is not None:
        logger.debug("fault %s on %s", fault.kind, name)
        return await _faulty_answer(state, request, body, content_type, fault)
    return web.Response(body=body, content_type=content_type, charset="utf-8" if body else None)


async def _before_headers(request: web.Request, fault: Fault) -> web.StreamResponse | None:
    """Apply the part of ``fault`` that strikes before the status line; a response to return
    when the fault ends the exchange there, else None (go on and answer)."""
    if fault.kind is FaultKind.STATUS:
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = str(math.ceil(fault.retry_after))
        raise _Reject(fault.status, fault.text, headers)
    if fault.kind in (FaultKind.NOT_ZIP, FaultKind.BODY):
        if fault.kind is FaultKind.NOT_ZIP:
            return web.Response(text=HTML_ERROR_PAGE, content_type="text/html")
        return web.Response(text=fault.text, content_type=fault.content_type or "text/plain")
    if fault.before_headers and fault.kind is FaultKind.RESET:
        reset_connection(request)
        return web.Response()  # never sent: the connection is gone
    if fault.before_headers and fault.kind is FaultKind.STALL:
        await stall(request, fault.seconds)
    return None


async def _faulty_answer(
    state: ServerState, request: web.Request, body: bytes, content_type: str, fault: Fault
) -> web.StreamResponse:
    """A query endpoint's answer ``body`` with ``fault`` applied."""
    early = await _before_headers(request, fault)
    if early is not None:
        return early
    if fault.kind is FaultKind.CONTENT_TYPE:
        content_type = fault.content_type or "text/plain"
    if fault.kind is FaultKind.TRUNCATE:
        body = body[: fault.position(len(body))]
    if fault.before_headers or fault.kind not in (
        FaultKind.RESET,
        FaultKind.STALL,
        FaultKind.CORRUPT,
    ):
        return web.Response(body=body, content_type=content_type)
    response = web.StreamResponse(status=200, headers={"Content-Type": content_type})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await stream_bytes(
        request,
        response,
        body,
        chunk_size=state.chunk_size,
        bandwidth=state.bandwidth,
        fault=fault,
    )
    return response


async def _zip(
    state: ServerState, request: web.Request, series: SeriesData, variant: ZipVariant
) -> web.StreamResponse:
    if state.zip_cache is None or (series.instances == () and state.archive.root is None):
        raise _Reject(500, "Error: this archive has rows only (metadata_only); it holds no images.")
    fault = state.faults.next_fault(series.uid)
    content_type = "application/octet-stream"
    if fault is not None:
        logger.debug("fault %s on attempt of %s", fault.kind, series.uid)
        early = await _before_headers(request, fault)
        if early is not None:
            return early
        if fault.kind is FaultKind.CONTENT_TYPE:
            content_type = fault.content_type or "text/plain"
        elif fault.kind is FaultKind.SHORT_ZIP:
            variant = _with(variant, keep=fault.keep if fault.keep is not None else 1)
        elif fault.kind is FaultKind.EMPTY_SERIES:
            variant = _with(variant, keep=0)
        elif fault.kind is FaultKind.HOSTILE_NAMES:
            variant = _with(variant, hostile=True)
        elif fault.kind is FaultKind.WRONG_SERIES and fault.other is not None:
            series = _series(state, fault.other)
    path, spans = await asyncio.to_thread(state.zip_cache.get, series, variant)
    response = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'attachment; filename="{series.uid}.zip"',
        },
    )
    response.enable_chunked_encoding()
    await response.prepare(request)
    await stream_file(
        request,
        response,
        path,
        chunk_size=state.chunk_size,
        bandwidth=state.bandwidth,
        fault=None if fault is not None and fault.before_headers else fault,
        spans=spans,
    )
    return response


def _with(variant: ZipVariant, *, keep: int | None = None, hostile: bool = False) -> ZipVariant:
    return ZipVariant(
        variant.new_file_names,
        variant.include_md5,
        variant.license,
        keep if keep is not None else variant.keep,
        hostile or variant.hostile,
    )


async def _single(
    state: ServerState, request: web.Request, params: dict[str, str]
) -> web.StreamResponse:
    series = _series(state, params["SeriesInstanceUID"])
    sop = params["SOPInstanceUID"]
    inst = next((i for i in series.instances if i.sop_uid == sop), None)
    if inst is None:
        raise _Reject(400, "Error: No image found for the given SOPInstanceUID.")
    path: Path = state.archive.file_path(inst)
    response = web.StreamResponse(status=200, headers={"Content-Type": "application/dicom"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await stream_file(
        request, response, path, chunk_size=state.chunk_size, bandwidth=state.bandwidth
    )
    return response


def _admin_log(state: ServerState) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(state.log.to_dict())

    return handler


def _admin_get_faults(state: ServerState) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        return web.json_response(state.faults.to_dict())

    return handler


def _admin_set_faults(state: ServerState) -> Handler:
    """POST a plan (FaultPlan.to_dict shape); it replaces the current one unless ?merge=1."""

    async def handler(request: web.Request) -> web.StreamResponse:
        try:
            data = await request.json()
            if request.query.get("merge") not in ("1", "true", "yes"):
                state.faults.clear()
            state.faults.update(data)
        except (ValueError, TypeError, KeyError) as exc:
            return _text(400, f"bad fault plan: {exc}")
        return web.json_response(state.faults.to_dict())

    return handler


def _admin_reset(state: ServerState) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        state.log.reset()
        state.faults.clear()
        return web.json_response({"reset": True})

    return handler
