"""The look every figure shares: colours, scales, fonts, the common layout and the empty figure.

Pages and the single-file report draw with the same theme, so a figure reads the same in both.
"""

from __future__ import annotations

import plotly.graph_objects as go

# One sequential scale for every heatmap; dark = high value.
HEATMAP_SCALE = "Viridis"
ACCENT = "#2563eb"      # our measurements
REFERENCE = "#d97706"   # the study's reported values
MUTED = "#94a3b8"
SET_COLORS = ("#2563eb", "#d97706", "#059669")
FONT = "Inter, system-ui, -apple-system, Segoe UI, Roboto, Helvetica, Arial, sans-serif"


def layout(fig: go.Figure, *, title: str | None = None, height: int = 360, **kw) -> go.Figure:
    fig.update_layout(
        template="plotly_white",
        font=dict(family=FONT, size=13, color="#1e293b"),
        title=dict(text=title, x=0.0, xanchor="left", font=dict(size=15)) if title else None,
        margin=dict(l=60, r=20, t=48 if title else 16, b=50),
        height=height,
        hoverlabel=dict(font=dict(family=FONT)),
        **kw,
    )
    return fig


def empty(message: str, height: int = 240) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text=message, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=14, color="#64748b"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return layout(fig, height=height)
