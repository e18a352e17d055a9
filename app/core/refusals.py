"""Refusals: a request that cannot be run, answered with an HTTP status and a code, nothing recorded."""

from __future__ import annotations

# Codes the engine raises that mean "this request cannot be run": refused at the door.
SUBMISSION_CODES = frozenset({
    "bad_id", "bad_revision", "path_forbidden", "not_found", "revision_not_found",
    "gated", "no_safetensors", "malformed", "arch_mismatch", "unsupported_adapter", "bad_request",
    "unsupported_format",
})

# Redis down is not the request's fault; the API, the guard and the UI say it the same way.
REDIS_DOWN = {
    "code": "redis_unavailable",
    "message": "The results store (Redis) is not reachable right now; nothing was recorded. Try again shortly.",
}


class Refused(Exception):
    """A request refused before anything was recorded; maps to HTTP `status`."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def detail(self) -> dict:
        return {"code": self.code, "message": self.message}


def refusal(e) -> Refused:
    """The HTTP refusal of an EngineError raised while resolving a submission."""
    if e.code in SUBMISSION_CODES:
        return Refused(422, e.code, e.message)
    # Not the request's fault: the Hub failing after retries (502 hub_unavailable, distinct from a
    # Redis outage's 503 redis_unavailable), disk full (507), a bug (500).
    if e.code == "transient":
        return Refused(502, "hub_unavailable", e.message)
    return Refused({"disk_full": 507}.get(e.code, 500), e.code, e.message)
