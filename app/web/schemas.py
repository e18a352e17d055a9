"""Request and response bodies of the JSON API (they also make the OpenAPI page at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from worker.engine.tolerance import Tolerance


# The API's tolerance: the engine's one Tolerance rule (finite, >= 0), and at most 1 (a larger one
# marks nothing and is a typo). JSON NaN/Infinity, which the stdlib parser accepts, are refused by it.
def _api_tolerance(t: float) -> float:
    t = float(Tolerance(t))
    if t > 1.0:
        raise ValueError(f"The tolerance must be at most 1, not {t!r}.")
    return t


ApiTolerance = Annotated[float, AfterValidator(_api_tolerance),
                         WithJsonSchema({"type": "number", "minimum": 0.0, "maximum": 1.0})]


class AnalysisRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"base": "local:demo/base", "tuned": "local:demo/rl_a", "tolerance": 1e-5}]})

    base: str | None = Field(default=None, max_length=500, description=(
        "'org/name', 'org/name@rev' or 'local:dir'. May be omitted when tuned is a PEFT LoRA adapter: "
        "the base its adapter_config.json names is used (422 otherwise)."))
    tuned: str = Field(min_length=1, max_length=500, description=(
        "Same forms as base; a PEFT LoRA adapter is compared as the model merge_and_unload() makes of it."))
    base_revision: str | None = Field(default=None, max_length=200, description="Branch, tag or commit of base.")
    tuned_revision: str | None = Field(default=None, max_length=200, description="Branch, tag or commit of tuned.")
    base_subfolder: str | None = Field(default=None, max_length=300, description=(
        "Folder inside base holding the weights (e.g. 'unet', 'text_encoder'); relative, no '..'."))
    tuned_subfolder: str | None = Field(default=None, max_length=300, description="Same for tuned.")
    base_file: str | None = Field(default=None, max_length=300, description=(
        "Exactly this weights file of base, relative to its subfolder: a .safetensors file or a "
        "*.safetensors.index.json (e.g. 'consolidated.safetensors', 'model.fp16.safetensors')."))
    tuned_file: str | None = Field(default=None, max_length=300, description=(
        "Same for tuned (e.g. 'adapter_model.safetensors')."))
    tolerance: ApiTolerance = Field(default=1e-5,
                             description="|tuned - base| above this counts as changed (masks, coverage).")
    rank: Literal["off", "sampled", "all"] = Field(default="off", description="Update-rank computation.")
    geometry: Literal["off", "sampled", "all"] = Field(
        default="off", description="Update geometry (principal energy, subspace rotation, spectral drift; "
                                   "float64 SVDs) of the same matrices rank would take.")
    token: str | None = Field(default=None, max_length=400, repr=False,
                              description="Hub token for gated/private repos; used for this analysis only, "
                                          "never stored with it.")


class Submission(BaseModel):
    id: str
    status: str
    url: str = Field(description="Permalink of the analysis page.")
    api_url: str


class GroupsProgress(BaseModel):
    """A fanned-out analysis's tensor groups (README, "Many workers")."""

    total: int
    done: int
    running: int


class Progress(BaseModel):
    tensors_done: int = 0
    tensors_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    bytes_per_s: float | None = None
    eta_s: float | None = None
    current: str | None = None
    groups: GroupsProgress | None = None  # only when the analysis is fanned out over workers


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


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "examples": [{"base": "local:demo/base", "run": "local:runs/sft_run", "tolerance": 1e-5},
                     {"base": "org/model", "run": "org/model", "revisions": "step-*"}]})

    base: str | None = Field(default=None, max_length=500, description=(
        "'org/name', 'org/name@rev' or 'local:dir'; default: the run's first checkpoint."))
    run: str = Field(min_length=1, max_length=500, description=(
        "'local:dir' holding checkpoint-<step>/ folders (HF Trainer / TRL layout), or a Hub repo 'org/name' "
        "whose branches and tags are the checkpoints."))
    revisions: str | list[str] | None = Field(default=None, description=(
        "Which checkpoints: a glob pattern ('step*') or a list / comma list of names; default: every "
        "checkpoint-<n> folder, or every branch and tag with a number in its name. Ordered by that number."))
    tolerance: ApiTolerance = Field(default=1e-5,
                             description="|tuned - base| above this counts as changed (the sets E, I, overlap).")
    token: str | None = Field(default=None, max_length=400, repr=False,
                              description="Hub token for gated/private repos; used for this run's analyses only, "
                                          "never stored with them.")


class RunSubmission(BaseModel):
    id: str
    status: str
    url: str = Field(description="Permalink of the run page, /r/<id>.")
    api_url: str


class RunListItem(BaseModel):
    id: str
    status: Literal["queued", "running", "stalled", "failed", "done"]
    phase: Literal["analyses", "reduce", "done"]
    url: str
    api_url: str
    run: str | None = None
    base: str | None = Field(default=None, description="The base as submitted (or the run's first checkpoint).")
    tolerance: float | None = None
    created_at: str
    updated_at: str
    progress: dict[str, Any]
    checkpoints: int
    final: dict[str, Any] | None = Field(default=None, description=(
        "The last checkpoint: name, step, its (base, c_k) analysis id and, once done, its sparsity at the "
        "run's tolerance."))


class RunList(BaseModel):
    items: list[RunListItem]
    total: int
    offset: int
    limit: int


class Run(BaseModel):
    id: str
    status: Literal["queued", "running", "stalled", "failed", "done"]
    phase: Literal["analyses", "reduce", "done"]
    url: str
    api_url: str
    request: dict[str, Any]
    base: dict[str, Any] | None = None
    run: dict[str, Any] | None = None
    created_at: str
    updated_at: str
    progress: dict[str, Any]
    checkpoints: list[dict[str, Any]] = Field(description="Per checkpoint: its (base, c_i) and consecutive "
                                                          "analyses' ids, status and progress.")
    error: ErrorInfo | None = None
    result: dict[str, Any] | None = Field(default=None, description="The run's dynamics (docs/CONTRACTS.md).")
