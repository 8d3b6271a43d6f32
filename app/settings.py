"""The one settings class, read from `APP_*` environment variables.

Unsafe or inconsistent values stop startup with a message naming the variable.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_store.errors import describe_validation_errors


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="APP_", extra="forbid", frozen=True)

    store: str = Field(description="model store: a directory")
    public_key: Path = Field(description="trusted public key PEM; every bundle is verified with it")
    admin_token: SecretStr | None = Field(None, description="bearer token for management routes; unset = off")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    device: Literal["cpu", "cuda"] = "cpu"
    max_batch: int = Field(16, ge=1, le=1024, description="images per forward pass")
    batch_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long a batch waits to fill")
    queue_bound: int = Field(256, ge=1, description="images queued before answering 503")
    max_image_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    max_pixels: int = Field(40_000_000, ge=1024)
    max_images_per_request: int = Field(64, ge=1)
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="bundle .tar upload limit")
    decode_threads: int = Field(2, ge=1, le=64, description="threads decoding images off the event loop")
    follow_interval_s: float = Field(5.0, ge=0, description="poll the store's active pointer; 0 = never")
    retry_after_s: int = Field(1, ge=1, description="Retry-After on 503 overload")

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 16:
            raise ValueError("APP_ADMIN_TOKEN must be at least 16 characters (or unset to disable management)")
        return v

    @field_validator("public_key")
    @classmethod
    def _key_exists(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"APP_PUBLIC_KEY {v} is not a file")
        return v

    @field_validator("store")
    @classmethod
    def _store_exists(cls, v: str) -> str:
        if not Path(v).is_dir():
            raise ValueError(f"APP_STORE {v} is not a directory (create it with `python -m model_store import`)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.queue_bound < self.max_images_per_request:
            raise ValueError("APP_QUEUE_BOUND must be at least APP_MAX_IMAGES_PER_REQUEST, or big requests always fail")
        return self


def settings_error(exc: ValidationError) -> str:
    """One line naming the environment variable: `APP_MAX_BATCH: Input should be ...`."""
    errors = [{**e, "loc": tuple(f"APP_{str(p).upper()}" for p in e["loc"])} for e in exc.errors()]
    return describe_validation_errors(errors, "settings")


@lru_cache
def get_settings() -> Settings:
    return Settings()
