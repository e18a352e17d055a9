"""Talking to a running service the way a client does: submit, poll, read the outcome."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from support.polling import wait_status


@dataclass
class Outcome:
    """How a submission ended: refused at the door (HTTP 4xx) or after running."""

    status: str  # "rejected" | "failed" | "done"
    code: str | None  # EngineError code when known
    message: str
    body: dict

    def __str__(self) -> str:
        return f"{self.status} [{self.code}] {self.message!r}"


def submit(client: httpx.Client, base: str, tuned: str, **fields) -> httpx.Response:
    return client.post("/api/analyses", json={"base": base, "tuned": tuned, **fields})


def get(client: httpx.Client, analysis_id: str) -> dict:
    r = client.get(f"/api/analyses/{analysis_id}")
    r.raise_for_status()
    return r.json()


def _detail_text(body) -> tuple[str | None, str]:
    """FastAPI bodies: {"detail": "text"} or {"detail": {"code","message"}} or a list of errors."""
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, str):
        return body.get("code") if isinstance(body, dict) else None, detail
    if isinstance(detail, dict):
        return detail.get("code"), str(detail.get("message", detail))
    if isinstance(detail, list):
        return None, "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail)
    return None, str(detail)


def outcome(client: httpx.Client, base: str, tuned: str, *, timeout: float = 60.0, **fields) -> Outcome:
    """Submit and follow the analysis to its end; a refusal is an outcome too."""
    r = submit(client, base, tuned, **fields)
    if 400 <= r.status_code < 500:
        code, message = _detail_text(r.json())
        return Outcome("rejected", code, message, r.json())
    assert r.status_code in (200, 201, 202), f"unexpected {r.status_code}: {r.text}"
    body = wait_status(client, r.json()["id"], timeout=timeout, interval=0.1)
    error = body.get("error") or {}
    return Outcome(body["status"], error.get("code"), error.get("message", ""), body)
