"""The one exception the engine raises on purpose, with a code the service maps to HTTP."""

from __future__ import annotations

CODES = frozenset(
    {
        "bad_id",
        "bad_request",
        "bad_revision",
        "not_found",
        "revision_not_found",
        "gated",
        "no_safetensors",
        "malformed",
        "arch_mismatch",
        "unsupported_adapter",
        "unsupported_format",
        "path_forbidden",
        "incompatible",
        "disk_full",
        "transient",
        "internal",
    }
)


class EngineError(Exception):
    """A problem with the input or its source, explained in one human sentence.

    `code` is machine-readable (see CODES); `transient` means retrying may help.
    """

    def __init__(self, code: str, message: str):
        if code not in CODES:
            raise ValueError(f"unknown EngineError code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}
