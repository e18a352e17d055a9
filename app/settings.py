"""Every knob of the service, read once from environment variables.

One typed object so that a setting has exactly one name, one default and one
place where it is documented; `tests/test_settings_documented.py` fails when a
field here is missing from the README's settings table.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "subnetscope"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUBNETSCOPE_", extra="ignore")

    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Artifacts (masks), embedded Redis files and demo checkpoints live here.",
    )
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SUBNETSCOPE_REDIS_URL", "REDIS_URL"),
        description="Redis to use; unset means `serve` starts an embedded redis-server.",
    )
    local_root: Path | None = Field(
        default=None,
        description="Server-side local checkpoints must lie under this directory "
        "(default: <data_dir>/checkpoints). Nothing outside it is ever opened.",
    )
    hf_token: str | None = Field(
        default=None,
        validation_alias=AliasChoices("SUBNETSCOPE_HF_TOKEN", "HF_TOKEN"),
        description="The worker's own Hub token, used when a request brings none.",
    )
    host: str = Field(default="127.0.0.1", description="Address `serve` binds.")
    port: int = Field(default=8000, description="Port `serve` binds.")
    queue: str = Field(default="subnetscope", description="RQ queue name.")
    workers: int = Field(default=1, description="Worker processes `serve` starts in embedded mode.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where the kernel runs; auto picks CUDA when present."
    )
    stall_seconds: float = Field(
        default=60.0,
        description="A running analysis whose worker has not reported for this long is shown as stalled.",
    )
    job_timeout_per_gb: float = Field(
        default=600.0, description="RQ job timeout, in seconds per GB of checkpoint (min 10 min)."
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Seals users' Hub tokens while they wait in Redis; set the same value on every machine "
        "(default: a random key in <data_dir>/secret.key).",
    )
    token_ttl_seconds: int = Field(
        default=3600, description="A user's Hub token is held for the worker at most this long."
    )
    dev: bool = Field(default=False, description="Development mode: Dash debug tools on.")

    @property
    def checkpoints_root(self) -> Path:
        return (self.local_root or self.data_dir / "checkpoints").resolve()

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
