"""The one settings class, read from `APP_*` environment variables.

Unsafe or inconsistent values stop startup with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store.errors import BundleError, describe_validation_errors
from model_store.receipts import ReceiptKeyError, load_private_key
from model_store.signing import trusted_keys
from model_store.store.base import REPLICA_PATTERN

# Defaults that modules below the settings also use (this module imports nothing of `app`).
BODY_TIMEOUT_S = 60.0  # a whole request body, however slowly it trickles in
HEADER_TIMEOUT_S = 10.0  # connect (or the previous answer) to the end of the headers
BATCH_TIMEOUT_S = 30.0  # a batch of 16 of the largest accepted images decodes in well under this
MAX_REQUEST_TIMEOUT_MS = 600_000  # the largest budget a request may ask for


def default_workers() -> int:
    """One inference process per core this process may run on."""
    return len(os.sched_getaffinity(0))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_", extra="forbid", frozen=True)

    store: str = Field(description="model store: a directory, or s3://bucket/prefix (AWS_* variables for the endpoint)")
    public_key: Path = Field(
        description="trusted public key PEM, or a directory of them (*.pem; key rotation: a bundle signed by "
        "any one verifies); every bundle is verified with it"
    )
    admin_token: SecretStr | None = Field(None, description="bearer token for management routes; unset = off")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["cpu", "cuda"] = "cpu"
    workers: int = Field(
        default_factory=default_workers, ge=1, le=256, description="inference processes; default: one per core"
    )
    worker_threads: int = Field(1, ge=1, le=64, description="torch threads per inference process")
    max_batch: int = Field(16, ge=1, le=1024, description="images per forward pass")
    queue_bound: int = Field(256, ge=1, description="images queued or in a forward pass before answering 503")
    max_pending_megapixels: int = Field(
        512, ge=1, description="decode work (image header megapixels) queued before answering 503"
    )
    max_explains: int = Field(
        1,
        ge=1,
        le=256,
        description="explanations (POST /v1/explain, each ~50 forward passes on one worker) running at once; "
        "more are answered 503, and none starts while station images wait",
    )
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1024, description="per image, and per image after its resize")
    max_images_per_request: int = Field(64, ge=1)
    max_request_bytes: int = Field(128 * 1024 * 1024, ge=1024, description="a predict request's whole body")
    max_body_bytes_in_flight: int = Field(
        256 * 1024 * 1024,
        ge=1024,
        description="predict bodies being received or waiting for their answer, all requests together; beyond: 503",
    )
    # 5 s: long enough for the largest accepted request on a loaded two-core machine, short
    # enough that no answer comes after its parcel is gone. Stations that know their own
    # budget (camera to diverter, a few hundred ms) send it as X-Request-Timeout-Ms.
    request_timeout_ms: int = Field(
        5000,
        ge=0,
        le=MAX_REQUEST_TIMEOUT_MS,
        description="a request's budget from its arrival when it names none (X-Request-Timeout-Ms); "
        "past it, 504 and its work is dropped; 0 = none",
    )
    batch_timeout_s: float = Field(
        BATCH_TIMEOUT_S, gt=0, le=3600, description="a worker not done with a batch by then is replaced (503)"
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="bundle .tar upload limit")
    max_bundle_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="an uploaded bundle, once extracted")
    monitor_window: int = Field(500, ge=0, le=100_000, description="images per station in the drift window; 0 = off")
    max_stations: int = Field(256, ge=1, le=10_000, description="stations with windows of their own; more share one")
    # 0.5: an alarm when a station's estimated cost per parcel is surely (its whole 95%
    # interval) above 1.5 times what the bundle expects at its deployment damage rate.
    cost_alarm_margin: float = Field(
        0.5,
        ge=0,
        le=100,
        description="estimated cost per parcel this far above the bundle's expected cost "
        "(0.5 = 50%) raises a station's cost alarm",
    )
    # Summaries: each replica writes its drift windows to the store (summaries/<replica>.json)
    # so GET /v1/monitoring shows the whole fleet and a restart with the same ID loses nothing.
    replica_id: str | None = Field(
        None,
        description="this replica's name in the fleet's drift summaries (1-128 of A-Z a-z 0-9 . _ -); "
        "default: host name and port (on Kubernetes the host name is the pod name)",
    )
    summary_interval_s: float = Field(
        30.0, ge=0, le=3600, description="write this replica's drift windows to the store every so often; 0 = off"
    )
    capture_fraction: float = Field(0.0, ge=0, le=1, description="share of predict requests kept for feedback; 0 = off")
    capture_location: str | None = Field(
        None, description="capture store: a directory or s3://bucket/prefix; default: beside the model store"
    )
    capture_max_megabytes: int = Field(1024, ge=1, description="capture size bound; oldest requests go first")
    capture_max_age_days: float = Field(30.0, gt=0, description="captured requests older than this are removed")
    receipt_key: Path | None = Field(
        None,
        description="EC P-256 private key PEM (python -m model_store keygen; not the bundle key) that signs a "
        "receipt for every decision served; unset = no receipts",
    )
    tls_cert_file: Path | None = Field(None, description="serve HTTPS with this certificate (PEM, chain first)")
    tls_key_file: Path | None = Field(None, description="the certificate's private key (PEM)")
    tls_client_ca_file: Path | None = Field(
        None, description="require client certificates signed by this CA (mutual TLS); needs APP_TLS_CERT_FILE"
    )
    station_tokens_file: Path | None = Field(
        None,
        description="one line per station, `station-id sha256-of-token`: predict and station feedback then need "
        "the station's bearer token, and the station is the token's (reloaded when it changes)",
    )
    station_token: SecretStr | None = Field(
        None, description="bearer token stations use for POST /v1/feedback (the admin token works too)"
    )
    follow_interval_s: float = Field(5.0, ge=0, description="poll the store's active pointer; 0 = never")
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 503 overload")
    header_timeout_s: float = Field(
        HEADER_TIMEOUT_S, gt=0, le=300, description="request line and headers must arrive within this"
    )
    body_timeout_s: float = Field(
        BODY_TIMEOUT_S, gt=0, le=3600, description="a whole request body must arrive within this"
    )
    max_connections: int = Field(
        1024,
        ge=1,
        le=1_000_000,
        description="open client connections; more are answered 503 at once (must fit the file-descriptor limit)",
    )

    @field_validator("admin_token", "station_token")
    @classmethod
    def _strong_token(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if v is None:
            return v
        token = v.get_secret_value()
        if len(token) < 16 or any(c.isspace() for c in token) or not token.isprintable():
            raise ValueError(
                f"APP_{str(info.field_name).upper()} must be at least 16 printable characters with no spaces "
                "(or unset to disable what it guards)"
            )
        return v

    @field_validator("replica_id")
    @classmethod
    def _replica_name(cls, v: str | None) -> str | None:
        if v is not None and not REPLICA_PATTERN.fullmatch(v):
            raise ValueError("APP_REPLICA_ID must be 1-128 of A-Z a-z 0-9 . _ - , starting alphanumeric")
        return v

    @field_validator("public_key")
    @classmethod
    def _key_exists(cls, v: Path) -> Path:
        if not v.is_file() and not v.is_dir():
            raise ValueError(f"APP_PUBLIC_KEY {v} is not a file (or a directory of *.pem keys)")
        try:
            trusted_keys(v)
        except BundleError as exc:
            raise ValueError(f"APP_PUBLIC_KEY: {exc}") from None
        return v

    @field_validator("receipt_key")
    @classmethod
    def _receipt_key_loads(cls, v: Path | None) -> Path | None:
        if v is not None:
            try:
                load_private_key(v)
            except ReceiptKeyError as exc:
                raise ValueError(f"APP_RECEIPT_KEY: {exc}") from None
        return v

    @field_validator("store")
    @classmethod
    def _store_exists(cls, v: str) -> str:
        if v.startswith("s3://"):
            return v  # reachable or not, the service starts and reports it in /readyz until it is
        if not Path(v).is_dir():
            raise ValueError(f"APP_STORE {v} is not a directory (create it with `python -m model_store import`)")
        return v

    @property
    def capture_store(self) -> str:
        """Where captured requests go: as configured, or beside the model store."""
        if self.capture_location:
            return self.capture_location
        return (
            f"{self.store.rstrip('/')}/capture"
            if self.store.startswith("s3://")
            else f"{self.store.rstrip('/')}.capture"
        )

    @property
    def replica(self) -> str:
        """This replica's ID: APP_REPLICA_ID, or `<host name>-<port>` (unique on a host, and
        the same after a restart, so the restarted replica finds its own windows again);
        with port 0 (any free port) the process ID stands in for it."""
        if self.replica_id is not None:
            return self.replica_id
        host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname()).lstrip("._-")[:100] or "replica"
        return f"{host}-{self.port or os.getpid()}"

    @property
    def loopback_only(self) -> bool:
        """True when the bind address only accepts connections from this machine."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False  # a host name: it may resolve to anything

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.queue_bound < self.max_images_per_request:
            raise ValueError("APP_QUEUE_BOUND must be at least APP_MAX_IMAGES_PER_REQUEST, or big requests always fail")
        if self.max_request_bytes < self.max_image_bytes:
            raise ValueError("APP_MAX_REQUEST_BYTES must be at least APP_MAX_IMAGE_BYTES, or no image fits a request")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("APP_TLS_CERT_FILE and APP_TLS_KEY_FILE go together: set both or neither")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("APP_TLS_CLIENT_CA_FILE needs APP_TLS_CERT_FILE: client certificates only exist over TLS")
        for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file", "station_tokens_file"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"APP_{name.upper()} {path} is not a file")
        if self.max_body_bytes_in_flight < self.max_request_bytes:
            raise ValueError(
                "APP_MAX_BODY_BYTES_IN_FLIGHT must be at least APP_MAX_REQUEST_BYTES, "
                "or the largest request always fails"
            )
        return self


def settings_error(exc: ValidationError) -> str:
    """One line naming the environment variable: `APP_MAX_BATCH: Input should be ...`."""
    errors = [{**e, "loc": tuple(f"APP_{str(p).upper()}" for p in e["loc"])} for e in exc.errors()]
    return describe_validation_errors(errors, "settings")


@lru_cache
def get_settings() -> Settings:
    return Settings()
