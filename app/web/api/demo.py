"""The demo families under the local root: which exist, and how far the trained one is."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.core import demo_family as demo_training
from app.core.settings import Settings
from app.web.api.deps import get_app_settings

router = APIRouter(tags=["demo"])


@router.get("/api/demo")
async def demo(settings: Settings = Depends(get_app_settings)):
    """The trained family's state (ready / training with a percent / failed / absent) and its ids.

    Reads two small files on the server's disk, no Redis: it answers while Redis is down too.
    """
    d = settings.checkpoints_root / "demo"
    trained = demo_training.status(d)
    trained["mode"] = settings.demo_training
    ready = trained["state"] == "ready"
    trained["pairs"] = [{"base": f"local:demo/{b}", "tuned": f"local:demo/{t}", "label": label}
                        for b, t, label in demo_training.PAIRS] if ready else []
    trained["runs"] = [f"local:demo/{r}" for r in demo_training.RUNS] if ready else []
    return {"trained": trained}
