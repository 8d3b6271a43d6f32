"""Station canaries: a stored version answers the requests of some stations, every other
station keeps the active version.

`PUT /v1/canary` verifies the version and passes its parity on this replica's workers,
then records it in the store with that proof, so every replica following the store serves
those stations with it too. `POST /v1/canary/promote` makes it the active version (proven
again, like an activation); `DELETE /v1/canary` returns its stations to the active version.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, RootModel, StringConstraints
from starlette.datastructures import State

from app.edge.deps import AdminDep, ServiceDep
from app.edge.intake import json_body, read_json, read_optional_json
from app.edge.schemas import AuditOut, error_responses
from app.service import Service
from model_store import rollout_check
from model_store.errors import ModelStoreError
from model_store.manifest import VERSION_PATTERN
from model_store.rollout import STATION_PATTERN, Policy

log = logging.getLogger("app.canary")
# The console refreshes every few seconds per open tab; evaluating reads every replica's
# summary from the store, so one evaluation serves every caller for this long.
POLICY_CHECK_CACHE_S = 5.0

router = APIRouter(prefix="/v1/canary", tags=["canary"], responses=error_responses(401, 403, 503))

StationID = Annotated[str, StringConstraints(pattern=f"^{STATION_PATTERN}$")]


class _Canary(BaseModel):
    model_config = ConfigDict(extra="forbid")  # stations and fraction exclude each other

    version: str = Field(pattern=VERSION_PATTERN)
    reason: str = Field("", max_length=500)


class CanaryOnStations(_Canary):
    stations: list[StationID] = Field(min_length=1, max_length=1000, description="the station IDs it serves")


class CanaryOnFraction(_Canary):
    fraction: float = Field(
        gt=0, le=1, description="the share of stations it serves, chosen by a stable hash of the station ID"
    )


class CanaryRequest(RootModel[CanaryOnStations | CanaryOnFraction]):
    """A list of stations or a fraction of stations, never both (the schema says so too)."""


# Each alternative's schema is self-contained (no $defs) and closed, so "both" and "neither"
# are schema-invalid: the document states exactly what the route accepts.
_CANARY_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {"anyOf": [CanaryOnStations.model_json_schema(), CanaryOnFraction.model_json_schema()]}
        }
    },
}


class CanaryChange(BaseModel):
    reason: str = Field("", max_length=500)


class PolicyChange(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Policy = Field(description="promotion policy settings; any not given take their defaults")
    reason: str = Field("", max_length=500)


@router.get("")
async def canary_status(request: Request, _: AdminDep, service: ServiceDep) -> dict[str, Any]:
    """The canary as this replica serves it, per station its comparison with the active
    version on the same images (`served`, `images` compared, `agree`, flips) and
    `policy_check`, what `canary check` would decide now; `canary` is null when there is none (`refused` names a
    canary version this replica refused to serve, whose stations keep the active version)."""
    host = service.host
    run, served = host.canary, host.current
    wanted = await host.store_call(host.store.canary)
    return {
        "active": served.version if served else None,
        "canary": run.canary.as_dict() if run else None,
        "store": wanted.as_dict() if wanted else None,
        "refused": host.refused.get(wanted.version) if wanted else None,
        "comparisons": host.canary_comparisons(),
        "policy_check": await _policy_check(service, request.app.state) if wanted else None,
    }


async def _policy_check(service: Service, state: State) -> dict[str, Any]:
    """What `canary check` would decide now (nothing is changed): the verdict, its reasons and
    per canary station the fleet's evidence, the canary's estimated cost beside the active
    version's at that station; `error` says why there is none (no policy set)."""
    cached: tuple[float, dict[str, Any]] | None = getattr(state, "policy_check", None)  # (monotonic time, result)
    if cached is not None and time.monotonic() - cached[0] < POLICY_CHECK_CACHE_S:
        return cached[1]
    host = service.host
    # Labels are left to `canary check --capture`: a scan of the capture store per console
    # refresh would cost more than the page is worth.
    try:
        checked = await host.store_call(
            rollout_check.check, host.store, actor="console", act=False, cost_margin=service.settings.cost_alarm_margin
        )
    except ModelStoreError as exc:
        result: dict[str, Any] = {"verdict": None, "error": f"{exc.code}: {exc}"}
    except Exception as exc:  # what the store holds is not ours to trust; the rest of the page stands
        log.exception("evaluating the promotion policy failed")
        result = {"verdict": None, "error": f"the evaluation failed ({type(exc).__name__})"}
    else:
        verdict = checked.verdict.evidence(checked.policy) if checked is not None else None
        result = {"verdict": verdict, "error": None if checked is not None else "no canary running"}
    state.policy_check = (time.monotonic(), result)
    return result


# The bodies are read by the handlers after the token check (`read_json`), never before it.
@router.put(
    "",
    response_model=AuditOut,
    responses=error_responses(400, 404, 408, 409, 413, 422),
    openapi_extra={"requestBody": _CANARY_BODY},
)
async def put_canary(request: Request, actor: AdminDep, service: ServiceDep) -> AuditOut:
    """Start a canary (or change the running one): verified and proven here first."""
    body = (await read_json(request, CanaryRequest)).root
    stations = body.stations if isinstance(body, CanaryOnStations) else []
    fraction = body.fraction if isinstance(body, CanaryOnFraction) else 0.0
    entry = await service.host.set_canary(
        body.version, stations=stations, fraction=fraction, actor=actor, reason=body.reason
    )
    return AuditOut.of(entry)


@router.delete(
    "",
    response_model=AuditOut,
    responses=error_responses(400, 408, 409, 413, 422),
    openapi_extra={"requestBody": json_body(CanaryChange, required=False)},
)
async def delete_canary(request: Request, actor: AdminDep, service: ServiceDep) -> AuditOut:
    """End the canary: its stations return to the active version."""
    body = await read_optional_json(request, CanaryChange)
    entry = await service.host.end_canary(actor=actor, reason=body.reason if body else "")
    return AuditOut.of(entry)


@router.post(
    "/promote",
    response_model=AuditOut,
    responses=error_responses(400, 408, 409, 413, 422),
    openapi_extra={"requestBody": json_body(CanaryChange, required=False)},
)
async def promote_canary(request: Request, actor: AdminDep, service: ServiceDep) -> AuditOut:
    """Make the canary the active version for every station (proven here like an activation)."""
    body = await read_optional_json(request, CanaryChange)
    entry, _ = await service.host.promote_canary(actor=actor, reason=body.reason if body else "")
    return AuditOut.of(entry)


@router.get("/policy")
async def get_policy(_: AdminDep, service: ServiceDep) -> dict[str, Any]:
    """The promotion policy `canary check` judges a canary by (null when none is set), every setting shown."""
    raw = await service.host.store_call(service.host.store.policy)
    return {"policy": Policy.from_dict(raw).to_dict() if raw is not None else None}


@router.put(
    "/policy",
    response_model=AuditOut,
    responses=error_responses(400, 408, 413, 422),
    openapi_extra={"requestBody": json_body(PolicyChange)},
)
async def put_policy(request: Request, actor: AdminDep, service: ServiceDep) -> AuditOut:
    """Set the promotion policy (audited; every setting not given takes its default)."""
    body = await read_json(request, PolicyChange)  # 422 naming an unknown or out-of-range setting
    policy = body.policy.to_dict()
    entry = await service.host.store_call(service.host.store.set_policy, policy, actor=actor, reason=body.reason)
    return AuditOut.of(entry)
