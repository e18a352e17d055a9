"""Users' Hub tokens (sealed, app/core/token_seal.py) while their analysis waits: expiring keys."""

from __future__ import annotations

from app.core.store.base import Keyed, KeyTemplate

token_key = KeyTemplate("token")  # per analysis


class Tokens(Keyed):
    def put_token(self, analysis_id: str, token: str, ttl: int) -> None:
        self.r.set(token_key(analysis_id), token, ex=ttl)

    def get_token(self, analysis_id: str) -> str | None:
        raw = self.r.get(token_key(analysis_id))
        return raw.decode() if raw else None
