"""The Dash dashboard served by the FastAPI app at `/`: mount and router.

`mount(app, settings)` builds one Dash app on the given FastAPI server (Dash's
native FastAPI backend, no WSGI bridge). Routing is our own small router on
`dcc.Location`: a page is chosen from the path, its view state from the query
string, so every view is a shareable link.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import dash
from dash import Input, Output, State
from dash.backends._fastapi import reset_current_request, set_current_request
from fastapi import Request
from starlette.responses import HTMLResponse, JSONResponse

from .apiclient import Api, ApiError
from .pages import analysis, compare, home, lineage, overlap, patch_card, run, shell, tensor

ASSETS = Path(__file__).parent / "assets"
log = logging.getLogger(__name__)

# path -> page module; "/a/<id>" is matched by prefix below
_PAGES = {"/": home, "/compare": compare, "/overlap": overlap, "/lineage": lineage}


def _route(pathname: str | None, search: str | None):
    query = {k: v[-1] for k, v in parse_qs((search or "").lstrip("?")).items()}
    path = (pathname or "/").rstrip("/") or "/"
    if path.startswith("/a/") and "/t/" in path[3:]:
        analysis_id, name = path[3:].split("/t/", 1)
        return tensor.layout(analysis_id, unquote(name), query)
    if path.startswith("/a/") and len(path) > 3:
        return analysis.layout(path[3:], query)
    if path.startswith("/o/") and len(path) > 3:
        return overlap.layout(query, overlap_id=path[3:])
    if path.startswith("/r/") and len(path) > 3:
        return run.layout(path[3:], query)
    if path.startswith("/l/") and len(path) > 3:
        return lineage.layout(query, job_id=path[3:])
    page = _PAGES.get(path)
    if page is None:
        return shell.not_found(path)
    return page.layout(query)


def _log_callback_error(err: Exception):
    # Dash's FastAPI backend answers a failed callback with a bare 500; keep the why in the log.
    log.error("dashboard callback failed", exc_info=err)
    raise err


def mount(fastapi_app: Any, settings: Any) -> dash.Dash:
    api = Api(fastapi_app, token_required=bool(getattr(settings, "api_token", None)))
    app = dash.Dash(
        __package__,  # "frontend", as when this lived in the package root
        server=fastapi_app,
        title="Subnetscope",
        assets_folder=str(ASSETS),
        suppress_callback_exceptions=True,
        update_title=None,
        serve_locally=True,
        on_error=_log_callback_error,
    )
    if getattr(settings, "dev", False):
        # tracebacks in the browser; never outside development (they show server paths)
        app.enable_dev_tools(debug=True, dev_tools_hot_reload=False)
    app.layout = shell.layout()

    @app.callback(Output("page", "children"), Input("url", "pathname"), State("url", "search"))
    def route(pathname, search):
        return _route(pathname, search)

    @app.callback(Output("health-banner", "children"), Output("health-banner", "className"),
                  Input("health-tick", "n_intervals"))
    async def health(_n):
        try:
            await api.health()
        except ApiError as err:
            if err.redis_down:
                return ("Redis is down: the service can't read or store analyses right now "
                        "(the API answers 503). Pages will recover when it is back."), "banner banner-error"
            return f"The API reports a problem: {err.detail}", "banner banner-error"
        except Exception as err:  # noqa: BLE001 - shown to the user, never raised
            return f"The API is unreachable: {err}", "banner banner-error"
        return "", "banner hidden"

    for page in (home, analysis, patch_card, compare, overlap, tensor, run, lineage):
        page.register(app, api)

    # Deep links (/a/<id>, /compare, /overlap) must serve the Dash index even
    # when the server runs without lifespan events (Dash adds its catch-all there).
    async def index(request: Request):
        token = set_current_request(request)
        try:
            app._setup_server()  # idempotent; the first request may be a deep link
            return HTMLResponse(app.index())
        finally:
            reset_current_request(token)

    for rule in ("/a/{analysis_id}", "/a/{analysis_id}/t/{name:path}", "/o/{overlap_id}", "/r/{run_id}", "/compare",
                 "/overlap", "/lineage", "/l/{job_id}"):
        fastapi_app.add_api_route(rule, index, methods=["GET"], include_in_schema=False)

    # Dash's catch-all would answer any unknown GET with the page (200 HTML); an API
    # client asking for a path that does not exist should get a JSON 404 instead.
    async def no_such_api(rest: str):
        return JSONResponse({"detail": {"code": "not_found", "message": f"No API endpoint /api/{rest}."}},
                            status_code=404)

    fastapi_app.add_api_route("/api/{rest:path}", no_such_api, methods=["GET"], include_in_schema=False)
    return app
