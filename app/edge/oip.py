"""The Open Inference Protocol v2 (KServe, Triton) wire format, as `tritonclient` writes it.

A request body is a JSON header, optionally followed by the binary tensor data extension's
section: `Inference-Header-Content-Length` says where the JSON ends, each input's
`binary_data_size` parameter how many bytes of the section are its, and a BYTES tensor is
its elements one after another, each a 4-byte little-endian length and that many bytes.

Every count and length here comes from the client, so each is checked before it is used:
the header JSON is at most `HEADER_BYTES`, the elements at most the per-request image count,
each one at most the per-image limit, and the body (after decompression too) at most the
request limit. Nothing is inflated past that limit: a zip bomb costs the limit, then 413.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.edge.errors import APIError
from app.edge.intake import BodyLimits
from app.settings import MAX_REQUEST_TIMEOUT_MS

HEADER_LENGTH = "Inference-Header-Content-Length"
HEADER_BYTES = 64 * 1024  # the JSON header: names, shapes, a few parameters
INPUT = "image"
# `reason`: why an image's decision is "retake" (outside the validated ranges); "" otherwise.
OUTPUTS = {"probability": "FP32", "decision": "BYTES", "reason": "BYTES"}
# With receipts on, one more output: each image's signed receipt (`result.as_numpy("receipt")`
# in tritonclient: one bytes object per image, beside its probability and decision).
RECEIPT = "receipt"
WITH_RECEIPTS = {**OUTPUTS, RECEIPT: "BYTES"}
# What `GET /v2` advertises: only what this module implements.
EXTENSIONS = ["binary_tensor_data", "parameters", "schedule_policy"]  # schedule_policy: the `timeout` parameter
_LENGTH = struct.Struct("<I")
# zlib's window bits: a gzip wrapper, or a zlib one (what clients, tritonclient among them, send as deflate).
_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def invalid(message: str) -> APIError:
    return APIError(400, "invalid_inference_request", message)


@dataclass(frozen=True)
class InferRequest:
    id: str | None  # the client's own id, echoed in the answer
    images: list[bytes]
    outputs: dict[str, bool]  # each output asked for: as binary data (True) or JSON
    timeout_ms: int | None = None  # the request parameter `timeout` (Triton: microseconds), as a budget


def decompress(raw: bytes, encoding: str | None, limit: int) -> bytes:
    """The body as sent before the client compressed it; never more than `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return raw
    if encoding not in _WBITS:
        raise APIError(415, "unsupported_media_type", f"content encoding {encoding!r}: send gzip, deflate or none")
    inflate = zlib.decompressobj(_WBITS[encoding])
    try:
        body = inflate.decompress(raw, limit + 1)  # one byte past the limit tells a bomb from a fit
    except zlib.error as exc:
        raise invalid(f"the {encoding} body could not be decompressed: {exc}") from None
    if len(body) > limit:
        raise APIError(413, "payload_too_large", f"the decompressed body exceeds the limit of {limit} bytes")
    if not inflate.eof or inflate.unused_data:
        raise invalid(f"the {encoding} body is truncated or has data after its end")
    return body


def parse_request(
    body: bytes, header_length: str | None, limits: BodyLimits, outputs: dict[str, str] = OUTPUTS
) -> InferRequest:
    """The images of an inference request (input `image`, BYTES, shape [N], binary data),
    and which of `outputs` (name: datatype) it asks for."""
    if header_length is None:
        length = len(body)
    elif not header_length.isdigit() or int(header_length) > len(body):
        raise invalid(f"{HEADER_LENGTH} {header_length[:40]!r} is not a length within the body's {len(body)} bytes")
    else:
        length = int(header_length)
    if length > HEADER_BYTES:
        raise APIError(413, "payload_too_large", f"the JSON header exceeds the limit of {HEADER_BYTES} bytes")
    try:
        header = json.loads(body[:length])
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid(f"the inference header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise invalid("the inference header must be a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise invalid(f"send exactly one input, {INPUT!r}")
    tensor = inputs[0]
    images = _images(tensor, body[length:], limits)
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise invalid("'id' must be a string")
    return InferRequest(request_id, images, _outputs(header, outputs), _timeout_ms(header))


def _timeout_ms(header: dict[str, Any]) -> int | None:
    """The request's budget from the `timeout` parameter (microseconds, Triton's schedule
    policy), rounded up to whole milliseconds; None when it sets none."""
    params = header.get("parameters")
    raw = params.get("timeout") if isinstance(params, dict) else None
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= MAX_REQUEST_TIMEOUT_MS * 1000:
        raise invalid(f"the 'timeout' parameter is microseconds, from 1 to {MAX_REQUEST_TIMEOUT_MS * 1000}")
    return -(-raw // 1000)


def _images(tensor: dict[str, Any], section: bytes, limits: BodyLimits) -> list[bytes]:
    name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
    if name != INPUT:
        raise invalid(f"unknown input {str(name)[:64]!r}: the one input is {INPUT!r}")
    if datatype != "BYTES":
        raise invalid(f"input {INPUT!r} has datatype {str(datatype)[:16]!r}; it is BYTES (encoded images)")
    if not (isinstance(shape, list) and len(shape) == 1 and type(shape[0]) is int and shape[0] >= 1):
        raise invalid(f"input {INPUT!r} has shape {str(shape)[:64]}; it is [N], N >= 1 images")
    count = shape[0]
    if count > limits.max_images:
        raise APIError(413, "too_many_images", f"{count} images in one request; the limit is {limits.max_images}")
    params = tensor.get("parameters") or {}
    size = params.get("binary_data_size") if isinstance(params, dict) else None
    if size is None:
        if "data" in tensor:
            raise invalid(
                f"input {INPUT!r} is BYTES given as JSON data: send the encoded images as binary data "
                "(the binary tensor data extension; tritonclient: set_data_from_numpy(..., binary_data=True))"
            )
        raise invalid(f"input {INPUT!r} has no binary_data_size: send the images as binary data")
    if type(size) is not int or size != len(section):
        raise invalid(f"binary_data_size {str(size)[:32]} does not match the {len(section)} bytes after the header")
    images: list[bytes] = []
    at = 0
    while at < len(section):
        if len(images) == count:
            raise invalid(f"the binary data holds more than the {count} elements of shape [{count}]")
        if at + _LENGTH.size > len(section):
            raise invalid(f"element {len(images)}'s length prefix runs past the end of the binary data")
        (n,) = _LENGTH.unpack_from(section, at)
        at += _LENGTH.size
        if n > limits.max_image_bytes:
            raise APIError(
                413,
                "image_too_large",
                f"image[{len(images)}] is {n} bytes; the limit is {limits.max_image_bytes}",
            )
        if at + n > len(section):
            raise invalid(f"image[{len(images)}] claims {n} bytes; only {len(section) - at} are left")
        images.append(section[at : at + n])
        at += n
    if len(images) != count:
        raise invalid(f"the binary data holds {len(images)} elements; shape [{count}] says {count}")
    return images


def _outputs(header: dict[str, Any], available: dict[str, str]) -> dict[str, bool]:
    params = header.get("parameters") or {}
    default = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    asked = header.get("outputs")
    if asked is None:
        return dict.fromkeys(available, default)
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise invalid("'outputs' must be a list of objects")
    wanted: dict[str, bool] = {}
    for o in asked:
        name = o.get("name")
        if name not in available:
            off = " (receipts are off on this service)" if name == RECEIPT else ""
            raise invalid(f"unknown output {str(name)[:64]!r}: the outputs are {', '.join(available)}{off}")
        p = o.get("parameters") or {}
        if isinstance(p, dict) and "classification" in p:
            raise invalid("the classification extension is not supported; ask for 'decision' instead")
        wanted[name] = bool(p.get("binary_data", default)) if isinstance(p, dict) else default
    return wanted


def response_body(
    header: dict[str, Any], outputs: dict[str, bool], columns: Mapping[str, Sequence[Any]]
) -> tuple[dict[str, Any] | bytes, int | None]:
    """The answer: a JSON object when no output is binary; else the JSON header's bytes and
    the binary section after it, with the header's length (for `HEADER_LENGTH`).
    `columns`: each output's values (FP32 as floats, BYTES as strings), one per image."""
    tensors: list[dict[str, Any]] = []
    section = bytearray()
    for name, binary in outputs.items():
        values = columns[name]
        tensor: dict[str, Any] = {"name": name, "datatype": WITH_RECEIPTS[name], "shape": [len(values)]}
        if not binary:
            tensor["data"] = list(values)
        else:
            if WITH_RECEIPTS[name] == "FP32":
                data = np.asarray(values, dtype="<f4").tobytes()
            else:
                data = b"".join(_LENGTH.pack(len(e)) + e for e in (str(v).encode() for v in values))
            tensor["parameters"] = {"binary_data_size": len(data)}
            section += data
        tensors.append(tensor)
    answer = {**header, "outputs": tensors}
    if not section:
        return answer, None
    head = json.dumps(answer, separators=(",", ":")).encode()
    return head + bytes(section), len(head)
