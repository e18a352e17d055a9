"""Request and response bodies of the JSON API (they also make the OpenAPI page at /docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class AnalysisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"base": "local:demo/base", "tuned": "local:demo/rl_a", "tolerance": 1e-5}]})

    base: str = Field(min_length=1, max_length=500, description="'org/name', 'org/name@rev' or 'local:dir'.")
    tuned: str = Field(min_length=1, max_length=500, description="Same forms as base.")
    base_revision: str | None = Field(default=None, max_length=200, description="Branch, tag or commit of base.")
    tuned_revision: str | None = Field(default=None, max_length=200, description="Branch, tag or commit of tuned.")
    tolerance: float = Field(default=1e-5, ge=0.0, le=1.0, allow_inf_nan=False,
                             description="|tuned - base| above this counts as changed (masks, coverage).")
    rank: Literal["off", "sampled", "all"] = Field(default="off", description="Update-rank computation.")
    token: str | None = Field(default=None, max_length=400, repr=False,
                              description="Hub token for gated/private repos; used for this analysis only, "
                                          "never stored with it.")


class Submission(BaseModel):
    id: str
    status: str
    url: str = Field(description="Permalink of the analysis page.")
    api_url: str


class Progress(BaseModel):
    tensors_done: int = 0
    tensors_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_per_s: float | None = None
    eta_s: float | None = None
    current: str | None = None


class ErrorInfo(BaseModel):
    code: str
    message: str


class Analysis(BaseModel):
    id: str
    status: Literal["queued", "running", "stalled", "failed", "done"]
    progress: Progress | None = None
    error: ErrorInfo | None = None
    request: dict[str, Any]
    created_at: str
    updated_at: str
    runs: int = Field(description="How many runs were started (more than one after a resume).")
    url: str
    result: dict[str, Any] | None = Field(default=None, description="Result, schema 1 (docs/CONTRACTS.md).")
    partial: list[dict[str, Any]] | None = Field(
        default=None, description="Finished tensor records so far, while not done.")


class AnalysisListItem(BaseModel):
    id: str
    status: str
    created_at: str
    updated_at: str
    base: str
    tuned: str
    tolerance: float
    rank: str
    summary: dict[str, Any] | None = None
    url: str


class AnalysisList(BaseModel):
    items: list[AnalysisListItem]
    total: int
    offset: int
    limit: int


class OverlapRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    analyses: list[str] = Field(min_length=2, max_length=3, description="Two or three finished analysis ids "
                                                                         "sharing one base.")


class Overlap(BaseModel):
    id: str
    status: Literal["queued", "running", "failed", "done"]
    analyses: list[str]
    error: ErrorInfo | None = None
    created_at: str
    updated_at: str
    result: dict[str, Any] | None = None


class Health(BaseModel):
    status: str
    redis: str
    workers: int
    queued: int
    engine_version: str


class ErrorBody(BaseModel):
    detail: ErrorInfo
