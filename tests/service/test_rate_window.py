"""The submission rate limit is a sliding window (app/web/guard.py), on a real redis-server: RATE
in any WINDOW seconds, whatever the clock says, and a refused request uses none of the allowance.
The clock is the guard's own `time.time`, set by the test; the app behind the guard answers 202."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import redis.asyncio

from app.core.settings import Settings
from app.web import guard

RATE, WINDOW = 2, 60


async def _accepted(scope, receive, send):
    await send({"type": "http.response.start", "status": 202, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_the_limit_counts_any_window_of_that_length_not_clock_minutes(redis_url, monkeypatch, tmp_path):
    now = [0.0]
    monkeypatch.setattr(guard.time, "time", lambda: now[0])

    async def run() -> list[tuple[float, str, int, dict]]:
        client = redis.asyncio.from_url(redis_url)
        await client.flushdb()
        settings = Settings(redis_url=redis_url, data_dir=tmp_path, submit_rate=RATE, submit_rate_window_s=WINDOW)
        app = guard.SubmissionGuard(_accepted, settings, lambda: SimpleNamespace(redis=client))
        seen = []
        # (time, client): two near the end of one clock minute, the rest after it
        for at, who in ((59.0, "a"), (59.5, "a"), (61.0, "a"), (61.5, "b"), (90.0, "a"),
                        (119.2, "a"), (119.3, "a"), (119.6, "a")):
            now[0] = at
            sent = []

            async def send(message, sent=sent):
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/api/analyses", "client": (who, 1), "headers": []}
            await app(scope, None, send)
            headers = {k.decode(): v.decode() for k, v in sent[0]["headers"]}
            seen.append((at, who, sent[0]["status"], {**headers, "body": json.loads(sent[1]["body"])}))
        await client.aclose()
        return seen

    with ThreadPoolExecutor(1) as pool:  # the browser tests' sync Playwright leaves a loop running on this thread
        seen = pool.submit(asyncio.run, run()).result()
    statuses = [(at, who, status) for at, who, status, _ in seen]
    assert statuses == [
        (59.0, "a", 202), (59.5, "a", 202),
        (61.0, "a", 429),  # a new clock minute, but two in the last 60 s: fixed windows let this through
        (61.5, "b", 202),  # another client has its own allowance
        (90.0, "a", 429),  # refused again: the refusals at 61.0 and here used none of the allowance...
        (119.2, "a", 202),  # ...so once 59.0 has left the window, one more goes through
        (119.3, "a", 429), (119.6, "a", 202),  # and the next once 59.5 has too
    ]
    retry = {at: int(h["retry-after"]) for at, _, status, h in seen if status == 429}
    assert retry == {61.0: 58, 90.0: 29, 119.3: 1}  # until the oldest in the window (59.0, then 59.5) leaves it
    body = seen[2][3]["body"]["detail"]
    assert body["code"] == "rate_limited" and f"{RATE} in any {WINDOW} s" in body["message"]
