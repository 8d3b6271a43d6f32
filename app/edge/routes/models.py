"""Management: versions, upload, activate, rollback. Bearer token required; off without one."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field
from starlette.convertors import StringConvertor, register_url_convertor

from app.edge.deps import AdminDep, ServiceDep
from app.edge.errors import APIError
from app.edge.intake import json_body, read_body, read_optional_json
from app.edge.schemas import (
    ParityResponse,
    SwapResponse,
    UploadResponse,
    VersionOut,
    VersionPath,
    VersionsResponse,
    error_responses,
)
from app.ops.upload import extract_bundle_tar, upload_root, workspace
from model_store.faults import crash_point


class _VersionConvertor(StringConvertor):
    """`{version:version}`: any segment but "rollback", which is `POST /v1/models/rollback`'s
    path, so `GET /v1/models/rollback` is a 405 naming POST, as the document says, not a
    lookup of a version called "rollback". (The name pattern itself is checked as a
    parameter: a bad name is a 422 that says why, not a 404.)"""

    regex = "(?!rollback$)[^/]+"


register_url_convertor("version", _VersionConvertor())

router = APIRouter(prefix="/v1/models", tags=["models"], responses=error_responses(401, 403, 503))


class SwapRequest(BaseModel):
    reason: str = Field("", max_length=500)


async def _reason(request: Request) -> str:
    """The optional `{"reason": ...}` body of a swap (bounded; read after the token check)."""
    body = await read_optional_json(request, SwapRequest)
    return body.reason if body else ""


@router.get("", response_model=VersionsResponse)
async def list_versions(_: AdminDep, service: ServiceDep) -> VersionsResponse:
    host = service.host
    infos = await host.store_call(host.store.versions)
    active = await host.store_call(host.store.active_version)
    served = host.current.version if host.current else None
    return VersionsResponse(
        active=active,
        served=served,
        versions=[VersionOut(**vars(i), served=i.version == served) for i in infos],
    )


@router.get("/{version:version}", responses=error_responses(404, 422))
async def show_version(version: VersionPath, _: AdminDep, service: ServiceDep) -> dict[str, Any]:
    host = service.host
    manifest = await host.store_call(host.store.manifest, version)
    return manifest.model_dump(mode="json")


# Read by the route itself (streamed, bounded); declared so /docs can send a file.
_TAR_BODY = {
    "required": True,
    "description": "a signed bundle as a .tar (optionally gzip, bzip2 or xz compressed)",
    "content": {
        kind: {"schema": {"type": "string", "format": "binary"}}
        for kind in ("application/x-tar", "application/tar", "application/octet-stream")
    },
}


@router.post(
    "",
    response_model=UploadResponse,
    status_code=201,
    responses={
        200: {"model": UploadResponse, "description": "the identical bundle was already stored"},
        **error_responses(408, 409, 413, 415, 422),
    },
    openapi_extra={"requestBody": _TAR_BODY},
)
async def upload(request: Request, response: Response, actor: AdminDep, service: ServiceDep) -> UploadResponse:
    host, settings = service.host, service.settings
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/x-tar", "application/tar", "application/octet-stream"):
        raise APIError(415, "unsupported_media_type", "upload a bundle as an application/x-tar body")
    data = await read_body(request, settings.max_upload_bytes, "bundle archive", settings.body_timeout_s)

    def store_it() -> UploadResponse:
        with workspace(upload_root()) as tmp:
            crash_point("upload.workspace_created")
            bundle_dir = extract_bundle_tar(data, tmp, settings.max_bundle_bytes)
            crash_point("upload.extracted")  # then the store's own import steps
            result = host.store.import_bundle(bundle_dir, actor=actor, reason="uploaded through the API")
            crash_point("upload.imported")
        return UploadResponse(version=result.version, created=result.created)

    result = await host.store_call(store_it)
    if not result.created:
        response.status_code = 200  # identical bundle already stored: nothing was created
    return result


_REASON_BODY = json_body(SwapRequest, required=False)  # an empty body is no reason


@router.post(
    "/rollback",
    response_model=SwapResponse,
    responses=error_responses(408, 409, 413, 422),
    openapi_extra={"requestBody": _REASON_BODY},
)
async def rollback(request: Request, actor: AdminDep, service: ServiceDep) -> SwapResponse:
    host = service.host
    previous = host.current.version if host.current else None
    entry, loaded = await host.rollback(actor=actor, reason=await _reason(request))
    return SwapResponse(
        active=loaded.version, previous=previous, audit_seq=entry.seq, parity=ParityResponse.of(loaded.parity)
    )


@router.post(
    "/{version:version}/activate",
    response_model=SwapResponse,
    responses=error_responses(404, 408, 409, 413, 422),
    openapi_extra={"requestBody": _REASON_BODY},
)
async def activate(version: VersionPath, request: Request, actor: AdminDep, service: ServiceDep) -> SwapResponse:
    host = service.host
    previous = host.current.version if host.current else None
    entry, loaded = await host.activate(version, actor=actor, reason=await _reason(request))
    return SwapResponse(
        active=loaded.version, previous=previous, audit_seq=entry.seq, parity=ParityResponse.of(loaded.parity)
    )
