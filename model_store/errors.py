"""Every refusal the contract can make, each with its own type and a one-line message.

The CLI prints `str(error)` and exits non-zero; the service maps `code` to a JSON error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class ModelStoreError(Exception):
    """Base class: something was refused. `code` is stable for APIs and scripts."""

    code = "model_store_error"


# --- bundle verification -------------------------------------------------------------


class BundleError(ModelStoreError):
    code = "bundle_invalid"


class SignatureMissing(BundleError):
    code = "signature_missing"


class SignatureInvalid(BundleError):
    """The signature does not verify with the trusted key (wrong key or altered signature)."""

    code = "signature_invalid"


class BundleTampered(BundleError):
    """A signed file's bytes differ from what was signed."""

    code = "bundle_tampered"


class FileSetMismatch(BundleError):
    """A file was added to or removed from the signed bundle."""

    code = "bundle_file_set_mismatch"


class ManifestInvalid(BundleError):
    code = "manifest_invalid"


class WeightsInvalid(BundleError):
    """Weights are not safetensors, or do not fit the architecture in the manifest."""

    code = "weights_invalid"


class UnsafeArchive(BundleError):
    """A bundle archive holds absolute paths, `..`, links or devices."""

    code = "unsafe_archive"


# --- images --------------------------------------------------------------------------


class ImageError(ModelStoreError):
    code = "invalid_image"


class ImageTooLarge(ImageError):
    code = "image_too_large"


class TooManyPixels(ImageError):
    code = "too_many_pixels"


class AspectRatioTooLarge(ImageError):
    """Resizing the shorter side would make more pixels than the limit allows."""

    code = "aspect_ratio_too_large"


class UnsupportedImageFormat(ImageError):
    code = "unsupported_image_format"


class UnsupportedImageMode(ImageError):
    """A pixel format (PIL mode) we cannot turn into 8-bit RGB faithfully."""

    code = "unsupported_image_mode"


class NotAnImage(ImageError):
    code = "not_an_image"


class ImageTooComplex(ImageError):
    """The file's structure (markers, chunks, scans) would cost far more to parse or decode
    than any camera photo does: refused before a decoder walks it."""

    code = "image_too_complex"


class TruncatedImage(ImageError):
    code = "truncated_image"


# --- store ---------------------------------------------------------------------------


class StoreError(ModelStoreError):
    code = "store_error"


class NotAStore(StoreError):
    """The location holds no store, and only an import (or `init`) may create one."""

    code = "not_a_store"


class VersionNotFound(StoreError):
    code = "version_not_found"


class VersionConflict(StoreError):
    """The version exists in the store with different content."""

    code = "version_conflict"


class InvalidVersionName(StoreError):
    code = "invalid_version_name"


class NothingToRollBack(StoreError):
    code = "nothing_to_roll_back"


class VersionRevoked(StoreError):
    """The version was revoked as known bad: no pointer move or replica may use it."""

    code = "version_revoked"


class CanaryConflict(StoreError):
    """A canary move that the store's state refuses: none running, one equal to the active
    version, revoking the canary's version."""

    code = "canary_conflict"


class CanaryChanged(CanaryConflict):
    """The canary ended or changed since the caller evaluated it (`expect_seq`)."""

    code = "canary_changed"


class InvalidCanary(StoreError):
    """Both or neither of stations and fraction, a fraction outside (0, 1], a bad station ID."""

    code = "invalid_canary"


class InvalidPolicy(StoreError):
    """A promotion policy with an unknown setting or a value out of its range."""

    code = "invalid_policy"


class ParityFailed(ModelStoreError):
    """The bundle's reference images do not reproduce the recorded outputs."""

    code = "parity_failed"


# --- formatting ----------------------------------------------------------------------


def describe_validation_errors(errors: Sequence[Mapping[str, Any]], source: str = "") -> str:
    """One line for a pydantic (or FastAPI) validation error list: where, what, how many.

    Every refusal of a config, manifest, setting or request body reads the same way.
    """
    if not errors:
        text = "<root>: invalid"
    else:
        first = errors[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "<root>"
        msg = "unknown key" if first.get("type") == "extra_forbidden" else str(first.get("msg", "invalid"))
        more = f" (+{len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        text = f"{where}: {msg}{more}"
    return f"{source}: {text}" if source else text
