"""Every knob of the service, read once from environment variables.

One typed object so that a setting has exactly one name, one default and one
place where it is documented; `tests/test_settings_documented.py` fails when a
field here is missing from the README's settings table.
"""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    return Path.home() / ".local" / "share" / "subnetscope"


def cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _default_web_workers() -> int:
    return max(1, min(4, cores()))


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmgtp]?)(i?)b?\s*$", re.IGNORECASE)


def parse_bytes(value) -> int | None:
    """A byte count from a number or text like "20GB", "1.5e9", "512MiB" (K/M/G/T/P: powers of
    1000, with i: of 1024); empty or 0 means no limit (None)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    else:
        m = _SIZE.match(str(value))
        if not m:
            raise ValueError(f"not a size: {value!r} (write bytes, or e.g. 20GB, 512MiB)")
        scale = (1024 if m.group(3) else 1000) ** " kmgtp".index(m.group(2).lower() or " ")
        number = float(m.group(1)) * scale
    return int(number) if number > 0 else None


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
    max_run_checkpoints: int = Field(
        default=64, ge=1,
        description="A training run (POST /api/runs, `subnetscope dynamics`) may compare at most this many "
        "checkpoints after its base; each costs two analyses.",
    )
    demo_training: Literal["full", "quick", "off"] = Field(
        default="full",
        description="What `serve` trains in the background for the demo's trained family "
        "(<local_root>/demo/trained): full (about a minute on two cores), quick (seconds; tests) or off.",
    )
    dev: bool = Field(default=False, description="Development mode: Dash debug tools on.")

    # --- serving reads fast, submissions apart -------------------------------------------
    web_workers: int = Field(
        default_factory=_default_web_workers, ge=1,
        description="Web (uvicorn) processes `serve` runs on one port; each has its own read cache.",
    )
    read_cache_bytes: int = Field(
        default=128 << 20, ge=0,
        description="Per web process: finished results kept encoded (and gzipped) in memory, least recently "
                    "read dropped first; 0 turns the cache off.",
    )
    resolve_threads: int = Field(
        default=8, ge=1,
        description="Per web process: threads that resolve submissions (Hub look-ups, headers, local content "
                    "ids), apart from the pool that serves reads; one pool for Hub pairs, one for local pairs.",
    )
    hub_timeout_s: float = Field(
        default=30.0, gt=0,
        description="A submission naming a Hub repo that is not resolved within this many seconds is answered "
                    "504 `hub_unavailable`; nothing is recorded.",
    )

    # --- shared deployments ------------------------------------------------------------
    api_token: SecretStr | None = Field(
        default=None,
        description="When set, every POST under /api needs `Authorization: Bearer <token>` (the dashboard's "
                    "form asks for it); reads stay open so permalinks work.",
    )
    submit_rate: int = Field(
        default=0, ge=0,
        description="POSTs under /api one client (IP address) may make in any `SUBNETSCOPE_SUBMIT_RATE_WINDOW_S` "
                    "seconds (a sliding window); more are answered 429 with Retry-After. 0: no limit.",
    )
    submit_rate_window_s: int = Field(
        default=60, ge=1, description="The sliding window of `SUBNETSCOPE_SUBMIT_RATE`, in seconds.",
    )
    max_bytes: int | None = Field(
        default=None,
        description="Pairs whose weights (base + tuned, as their safetensors headers declare) exceed this are "
                    "refused with 422 `too_large` before any weight byte is read; e.g. 40GB, 64GiB. Unset: no limit.",
    )

    # --- one analysis over many workers --------------------------------------------------
    fanout_bytes: int | None = Field(
        default=4 << 30,
        description="An analysis whose pair (base + tuned weight bytes) is larger than this is split into tensor "
                    "groups of about `SUBNETSCOPE_FANOUT_GROUP_BYTES`, one RQ job each, that any worker on the same "
                    "Redis takes, then merged by a reduce job; e.g. 4GiB (the default), 500MB. 0: never.",
    )
    fanout_group_bytes: int = Field(
        default=2 << 30,
        description="Bytes of a fan-out group (the split is by compared tensor bytes, whole tensors, at most 256 "
                    "groups); smaller groups balance better over many workers, each costs a job and a reopening "
                    "of both checkpoints' headers; e.g. 2GiB (the default).",
    )

    @field_validator("max_bytes", "fanout_bytes", mode="before")
    @classmethod
    def _size(cls, value):
        return parse_bytes(value)

    @field_validator("fanout_group_bytes", mode="before")
    @classmethod
    def _group_size(cls, value):
        size = parse_bytes(value)
        if size is None:
            raise ValueError("a fan-out group must be more than 0 bytes")
        return size

    @property
    def checkpoints_root(self) -> Path:
        return (self.local_root or self.data_dir / "checkpoints").resolve()

    @property
    def artifacts_dir(self) -> Path:
        return self.data_dir / "artifacts"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
