"""GET /v1/receipts/keys: the public key that verifies this service's decision receipts."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from app.edge.deps import ServiceDep
from app.edge.errors import APIError
from app.edge.schemas import error_responses

router = APIRouter(prefix="/v1", tags=["predict"])


@router.get("/receipts/keys", responses=error_responses(404))
async def receipt_keys(service: ServiceDep) -> dict[str, Any]:
    """The receipts' public key as a JWK set (RFC 7517; `kid` is its RFC 7638 thumbprint):
    save it and check receipts with `python -m model_store receipt verify RECEIPT --receipt-key FILE`."""
    if service.receipts is None:
        raise APIError(404, "receipts_off", "receipts are off on this service: set APP_RECEIPT_KEY to sign them")
    return service.receipts.keys()
