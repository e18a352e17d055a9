"""Subnetscope's web UI: Dash pages (`pages/`), pure figure functions (`figures/`), number
formatting (`numbers`), the in-process API client and the single-file report.

The package root stays empty of imports so that the figures and numbers can be used without
Dash (the CLI's report, the `subnetscope` notebook API); `mount` loads the dashboard on demand.
"""

from __future__ import annotations

from typing import Any


def mount(fastapi_app: Any, settings: Any):
    """Build the Dash app on `fastapi_app` (see `frontend.dashboard`)."""
    from .dashboard import mount as _mount

    return _mount(fastapi_app, settings)
