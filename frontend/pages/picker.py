"""Choosing finished analyses (compare and overlap pages): options, pasted ids."""

from __future__ import annotations

import asyncio
import re

from .. import numbers as N

ID_RE = re.compile(r"[0-9A-Za-z_-]{4,64}")


def parse_ids(text: str | None) -> list[str]:
    """Ids from a pasted string or a URL value: commas, spaces or whole permalinks."""
    out: list[str] = []
    for tok in re.split(r"[\s,;]+", text or ""):
        tok = tok.strip().rstrip("/")
        if "/a/" in tok:
            tok = tok.split("/a/")[-1].split("?")[0]
        if ID_RE.fullmatch(tok) and tok not in out:
            out.append(tok)
    return out


def label(analysis: dict) -> str:
    """'base → tuned' for an analysis body (GET /api/analyses/{id}) or a list item."""
    result = analysis.get("result") or {}
    if result.get("base"):
        return N.pair_label(result)
    if isinstance(analysis.get("base"), str):
        return N.pair_label(analysis)
    req = analysis.get("request") or {}
    if req.get("base"):
        # a LoRA adapter's description (with its "LoRA r=…, alpha=…" label) is known from submission on
        tuned = ((req.get("sources") or {}).get("tuned") or {})
        return N.pair_label({"base": req.get("base"),
                             "tuned": tuned if isinstance(tuned, dict) and tuned.get("adapter") else req.get("tuned")})
    return "analysis " + str(analysis.get("id", "?"))


def short_label(analysis: dict) -> str:
    """The finetuned side alone: enough to tell analyses of one base apart."""
    return label(analysis).split(" → ")[-1]


async def options(api, selected: list[str], *, same_base: bool = False) -> list[dict]:
    """Dropdown options: recent finished analyses plus whatever is already selected.
    With same_base, analyses of another base (commit) or tolerance than the first
    selected one are shown disabled: an overlap needs one base and one tolerance."""
    items = await api.recent(limit=100)
    by_id = {item["id"]: item for item in items}
    anchor = _base_key(by_id.get(selected[0])) if same_base and selected else None
    opts, seen = [], set()
    for item in items:
        if item.get("status") != "done":
            continue
        opt = {"label": f"{label(item)}  ·  {item['id'][:8]}", "value": item["id"]}
        if anchor and item["id"] not in selected and _base_key(item) != anchor:
            opt["disabled"] = True
            opt["label"] += "  (other base or tolerance)"
        opts.append(opt)
        seen.add(item["id"])
    missing = [i for i in selected if i not in seen]
    for aid, a in zip(missing, await fetch_many(api, missing)):
        opts.append({"label": f"{label(a) if isinstance(a, dict) else aid}  ·  {aid[:8]}", "value": aid})
    return opts


def _base_key(item: dict | None):
    if not item:
        return None
    summary = item.get("summary") or {}
    sha = (summary.get("base") or {}).get("sha") if isinstance(summary.get("base"), dict) else None
    return (sha or item.get("base"), str(summary.get("tolerance", item.get("tolerance"))))


async def fetch_many(api, ids: list[str]) -> list:
    """Each analysis, or the exception its fetch raised."""
    return await asyncio.gather(*(api.analysis(i) for i in ids), return_exceptions=True)
