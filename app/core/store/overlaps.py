"""Overlaps of analyses' changed sets: one hash per overlap, created like an analysis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from app.core.store.base import PREFIX, Keyed, KeyTemplate, dumps

RECENT_OVERLAPS = f"{PREFIX}:overlaps"  # zset id -> created_at


overlap_key = KeyTemplate("overlap")


class Overlaps(Keyed):
    def create_overlap(self, overlap_id: str, analyses: Iterable[str]) -> int:
        return int(self._lua("create_record", [overlap_key(overlap_id), RECENT_OVERLAPS],
                             [overlap_id, repr(time.time()), json.dumps({"analyses": list(analyses)}), "null"]))

    def get_overlap_raw(self, overlap_id: str) -> dict[str, str] | None:
        return self._hash(overlap_key(overlap_id))

    def drop_overlap(self, overlap_id: str) -> None:
        with self.r.pipeline() as p:
            p.delete(overlap_key(overlap_id))
            p.zrem(RECENT_OVERLAPS, overlap_id)
            p.execute()

    def finish_overlap(self, overlap_id: str, status: str, *, result: dict | None = None,
                       error: dict | None = None) -> None:
        fields = {"status": status, "updated_at": repr(time.time())}
        if result is not None:
            fields["result"] = dumps(result)
        if error is not None:
            fields["error"] = json.dumps(error)
        self.r.hset(overlap_key(overlap_id), mapping=fields)
