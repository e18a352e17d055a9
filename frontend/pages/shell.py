"""The frame around every page (header, nav, banner) and small shared components."""

from __future__ import annotations

from dash import dcc, html

NAV = (("Analyze", "/"), ("Compare", "/compare"), ("Overlap", "/overlap"), ("Lineage", "/lineage"))

STATUS_LABEL = {"queued": "queued", "running": "running", "stalled": "stalled",
                "failed": "failed", "done": "done"}


def layout():
    return html.Div([
        dcc.Location(id="url", refresh="callback-nav"),
        # The deployment's API token once typed in the home form (SUBNETSCOPE_API_TOKEN), for this tab's
        # submissions, retries and overlaps; session storage, so it goes when the tab does.
        dcc.Store(id="api-token", storage_type="session"),
        html.Header(className="topbar", children=html.Div(className="topbar-inner", children=[
            dcc.Link(className="brand", href="/", children=[
                html.Span("◧", className="brand-mark"), html.Span("Subnetscope"),
            ]),
            html.Span("which parameters did finetuning change?", className="tagline"),
            html.Nav(className="nav", children=[
                *[dcc.Link(label, href=href, className="nav-link") for label, href in NAV],
                html.A("API docs", href="/docs", className="nav-link", target="_blank"),
            ]),
        ])),
        html.Div(id="health-banner", className="banner hidden", role="alert"),
        dcc.Interval(id="health-tick", interval=10_000, n_intervals=0),
        html.Main(id="page", className="container"),
    ])


def card(*parts, className: str = "", children=None, **kw):
    items = list(parts) + (list(children) if children else [])
    return html.Section(className=f"card {className}".strip(), children=items, **kw)


def stat(label: str, value, sub=None, *, id: str | None = None, className: str = ""):
    kw = {"id": id} if id else {}
    return html.Div(className=f"stat {className}".strip(), **kw, children=[
        html.Div(label, className="stat-label"),
        html.Div(value, className="stat-value"),
        html.Div(sub, className="stat-sub") if sub else None,
    ])


def badge(status: str | None):
    status = status or "unknown"
    return html.Span(STATUS_LABEL.get(status, status), className=f"badge badge-{status}")


def notice(text, kind: str = "info", **kw):
    return html.Div(text, className=f"notice notice-{kind}", **kw)


def not_found(path: str):
    return card(html.H2("Page not found"),
                html.P(["Nothing lives at ", html.Code(path), ". Start from ",
                        dcc.Link("Analyze", href="/"), "."]))
