"""The single-file HTML report: a result, an overlap, a comparison or a training run, to attach
to a paper, an issue or a chat.

One self-contained file: plotly.js is inlined once, every figure is drawn by the same pure figure
functions as the pages (`frontend.figures`), styles are inline, and nothing is fetched (no CDN,
no web font, no MathJax), so it opens from `file://` with no network. Pure functions of result
data, like the figures: `subnetscope report`, the pages' "Download report" buttons and
`subnetscope.report` all call these.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
from collections.abc import Mapping, Sequence

import plotly.graph_objects as go

from . import numbers as N
from . import summary as S
from .figures import analysis as FA
from .figures import compare as FC
from .figures import overlap as FO
from .figures import precision as FP
from .figures import run as FR
from .figures.theme import FONT
from .notes import comparison_notes

TOP_TENSORS = 20
PLOT_CONFIG = {"displaylogo": False, "responsive": True, "typesetMath": False}

_CSS = f"""
body {{ font-family: {FONT}; color: #1e293b; margin: 0; background: #f8fafc; }}
main {{ max-width: 1120px; margin: 0 auto; padding: 24px; }}
h1 {{ font-size: 22px; margin: 0 0 4px; }} h2 {{ font-size: 17px; margin: 28px 0 8px; }}
.meta {{ color: #64748b; font-size: 13px; margin: 0 0 16px; }}
.cards {{ display: flex; flex-wrap: wrap; gap: 12px; }}
.card {{ background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; padding: 12px 16px; min-width: 180px; }}
.card .label {{ color: #64748b; font-size: 12px; }} .card .value {{ font-size: 20px; font-weight: 600; }}
.card .sub {{ color: #64748b; font-size: 12px; }}
.summary {{ background: #fff; border-left: 4px solid #2563eb; padding: 12px 16px; line-height: 1.5; }}
.figure {{ background: #fff; border: 1px solid #e2e8f0; border-radius: 8px; margin: 12px 0; padding: 4px; }}
table {{ border-collapse: collapse; background: #fff; font-size: 13px; width: 100%; }}
th, td {{ border-bottom: 1px solid #e2e8f0; padding: 4px 8px; text-align: left; }}
td.num, th.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.mono {{ font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12px; }}
.warn {{ color: #92400e; }} footer {{ color: #94a3b8; font-size: 12px; margin-top: 32px; }}
"""


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _plotlyjs() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


class _Doc:
    """An HTML body under construction; figures become divs drawn by one script at the end."""

    def __init__(self):
        self.parts: list[str] = []
        self.figures: list[tuple[str, str]] = []

    def add(self, markup: str) -> None:
        self.parts.append(markup)

    def h2(self, text: str) -> None:
        self.add(f"<h2>{_esc(text)}</h2>")

    def figure(self, fig: go.Figure) -> None:
        div = f"fig-{len(self.figures)}"
        self.figures.append((div, fig.to_json()))
        self.add(f'<div class="figure"><div id="{div}" class="report-figure"></div></div>')

    def render(self, title: str) -> str:
        # "</" inside a script would end it early (a tensor name could hold it); JSON allows "<\\/".
        specs = ",\n".join(f"[{json.dumps(div)}, {spec}]" for div, spec in self.figures).replace("</", "<\\/")
        calls = (f"const FIGURES = [{specs}];\nfor (const [div, fig] of FIGURES) "
                 f"Plotly.newPlot(div, fig.data, fig.layout, {json.dumps(PLOT_CONFIG)});")
        made = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{_esc(title)}</title><style>{_CSS}</style>"
                f"<script>{_plotlyjs()}</script></head>\n<body><main>\n" + "\n".join(self.parts)
                + f"\n<footer>Written by Subnetscope on {made}. Every number follows docs/METRICS.md; "
                  f"the file needs no network.</footer></main>\n<script>\n{calls}\n</script></body></html>\n")


def _cards(items: Sequence[tuple[str, str, str]]) -> str:
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="label">{_esc(a)}</div><div class="value">{_esc(b)}</div>'
        f'<div class="sub">{_esc(c)}</div></div>' for a, b, c in items) + "</div>"


def _table(header: Sequence[str], rows: Sequence[Sequence], numeric: Sequence[bool] | None = None,
           cls: str = "") -> str:
    numeric = numeric or [False] * len(header)
    head = "".join(f'<th class="{"num" if n else ""}">{_esc(h)}</th>' for h, n in zip(header, numeric))
    body = "".join("<tr>" + "".join(f'<td class="{"num" if n else ""}">{_esc(v)}</td>' for v, n in zip(r, numeric))
                   + "</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _side(side: Mapping) -> str:
    adapter = side.get("adapter")
    sha = str(side.get("sha") or "")
    label = f"{side.get('id')} ({adapter.get('label')})" if isinstance(adapter, Mapping) else str(side.get("id"))
    rev = side.get("revision")
    return f"{label}" + (f" @ {rev}" if rev else "") + (f" · sha {sha}" if sha else "")


def _tolerance(result: Mapping) -> float:
    t = (result.get("options") or {}).get("tolerance")
    return float(t) if isinstance(t, (int, float)) and math.isfinite(t) else N.DEFAULT_TOLERANCE


def _analysis_sections(doc: _Doc, result: Mapping) -> None:
    summary = result.get("summary") or {}
    t = _tolerance(result)
    s, exact = N.result_sparsity(result, t)
    bit, _ = N.result_sparsity(result, 0.0)
    ref = (result.get("reference") or {}).get("sparsity") or {}
    ref_val = ref.get(N.tol_key(t))
    rank = summary.get("rank") if isinstance(summary.get("rank"), Mapping) else {}
    rank_mean = S.as_number(rank.get("mean"))
    cards = [(f"Update sparsity at t = {N.fmt_tol(t)}", ("" if exact else "≈ ") + N.fmt_pct(s),
              f"the study reports {ref_val:.2f} %" if isinstance(ref_val, (int, float)) else "measured"),
             ("Bit-exact sparsity (t = 0)", N.fmt_pct(bit),
              f"{N.fmt_int((summary.get('changed') or {}).get('0.0'))} elements differ at all"),
             ("Elements compared", N.fmt_int(summary.get("numel")), f"{N.fmt_int(summary.get('tensors'))} tensors")]
    if rank_mean is not None:
        cards.append(("Mean update rank", N.fmt_pct(rank_mean, 1), f"{N.fmt_int(rank.get('matrices'))} matrices"))
    doc.add(_cards(cards))
    doc.add(f'<p class="summary" id="plain-summary">{_esc(S.plain_summary(result))}</p>')
    if ref:
        doc.h2("The study's value for this pair")
        doc.add(_table(["tolerance", "measured here", "reported in the study"],
                       [(N.fmt_tol(float(k)), N.fmt_pct(N.result_sparsity(result, float(k))[0]), f"{v:.2f} %")
                        for k, v in ref.items()], [False, True, True])
                + f'<p class="meta">{_esc((result.get("reference") or {}).get("source"))}</p>')
    doc.h2("Sparsity against tolerance")
    doc.figure(FA.tolerance_curve(result, t))
    changed = summary.get("changed") or {}
    doc.add(_table(["tolerance", "changed", "sparsity"],
                   [(N.fmt_tol(float(k)), N.fmt_int(c), N.fmt_pct((summary.get("sparsity") or {}).get(k)))
                    for k, c in changed.items()], [False, True, True]))
    tensors = result.get("tensors") or []
    curve = result.get("curve_tolerances")
    doc.h2(f"Layers × modules: sparsity at t = {N.fmt_tol(t)}")
    doc.figure(FA.layer_module_heatmap(tensors, curve, t, "sparsity"))
    doc.figure(FA.layer_bars(tensors, curve, t, "sparsity"))
    doc.h2(f"Per module type at t = {N.fmt_tol(t)}")
    doc.add(_table(["module", "elements", "changed", "sparsity"], S.module_rows(result, t), [False, True, True, True]))
    doc.h2(f"Top {TOP_TENSORS} tensors by changed share at t = {N.fmt_tol(t)}")
    doc.add(_table(["tensor", "shape", "elements", "changed", "sparsity", "bit-exact changed"],
                   [(r["name"], r["shape"], N.fmt_int(r["numel"]), N.fmt_int(r["changed"]), f"{r['sparsity']:.4f} %",
                     N.fmt_int(r["exact_changed"])) for r in S.top_tensors(result, t, TOP_TENSORS)],
                   [False, False, True, True, True, True], cls="mono"))
    _precision_section(doc, result)
    if rank_mean is not None:
        doc.h2("Update rank")
        doc.figure(FA.rank_chart(result))
    if FA.geometry_summary(result) is not None:
        doc.h2("Update geometry")
        doc.figure(FA.principal_energy(result))
        doc.figure(FA.geometry_heatmap(tensors))
        doc.figure(FA.geometry_layers(tensors))
    _patch_section(doc, result)
    _warnings(doc, comparison_notes(result))


def _flat(prefix: str, value, out: list) -> None:
    """Scalars of a nested block as (dotted key, value) rows; long lists are summarised by length."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (list, tuple)):
        out.append((prefix, ", ".join(_fmt_scalar(v) for v in value) if len(value) <= 12 else f"{len(value)} values"))
    else:
        out.append((prefix, _fmt_scalar(value)))


def _fmt_scalar(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


_DRAWN = ("bins", "labels", "compared", "changed", "ratio", "one_step_share")


def _precision_section(doc: _Doc, result: Mapping) -> None:
    summary = result.get("summary") or {}
    ulp = summary.get("ulp") or {}
    precision = summary.get("precision")
    if not any(ulp.get("counts") or []) and not precision:
        return
    doc.h2("Precision")
    if any(ulp.get("counts") or []):
        doc.figure(FA.ulp_histogram(result))
    if FP.precision_block(result) is not None:
        doc.figure(FP.changed_by_magnitude(result, _tolerance(result)))
    # the per-bin lists are in the figure; the table keeps the rest (counterfactuals, cosine)
    rest = {k: v for k, v in precision.items() if k not in _DRAWN} if isinstance(precision, Mapping) else {}
    if rest:
        rows: list = []
        _flat("", rest, rows)
        doc.add(_table(["precision field (docs/METRICS.md, 'Precision and magnitude')", "value"], rows[:200],
                       cls="mono"))


def _patch_section(doc: _Doc, result: Mapping) -> None:
    patch = result.get("patch")
    if isinstance(patch, Mapping) and patch:
        rows: list = []
        _flat("", patch, rows)
        doc.h2("Patch size")
        doc.add(_table(["patch field (docs/METRICS.md, 'Patches and lineage')", "value"], rows[:100], cls="mono"))


def _warnings(doc: _Doc, warnings) -> None:
    if warnings:
        doc.h2("Warnings")
        doc.add("<ul>" + "".join(f'<li class="warn">{_esc(w)}</li>' for w in warnings) + "</ul>")


def _overlap_sections(doc: _Doc, overlap: Mapping) -> None:
    doc.add(f'<p class="summary" id="overlap-summary">{_esc(S.overlap_summary(overlap))}</p>')
    doc.figure(FO.venn(overlap))
    doc.figure(FO.overlap_bars(overlap))
    doc.figure(FO.overlap_layer_heatmap(overlap))
    _warnings(doc, overlap.get("warnings"))


def analysis_report(result: Mapping, overlap: Mapping | None = None) -> str:
    """The report of one analysis (schema 1), with an overlap of it and others when given."""
    doc = _Doc()
    title = f"{N.pair_label(result)} · Subnetscope report"
    opts = result.get("options") or {}
    doc.add(f"<h1>{_esc(N.pair_label(result))}</h1>")
    doc.add(f'<p class="meta">base {_esc(_side(result.get("base") or {}))}<br>tuned '
            f'{_esc(_side(result.get("tuned") or {}))}<br>options '
            f'{_esc(", ".join(f"{k} {v}" for k, v in opts.items()))} · engine {_esc(result.get("engine_version"))}'
            f' · {_esc((result.get("summary") or {}).get("device"))}</p>')
    _analysis_sections(doc, result)
    if overlap:
        doc.h2("Subnetwork overlap")
        _overlap_sections(doc, overlap)
    return doc.render(title)


def overlap_report(overlap: Mapping) -> str:
    doc = _Doc()
    labels = " · ".join(str(x) for x in overlap.get("labels") or [])
    doc.add(f"<h1>Overlap: {_esc(labels)}</h1>")
    doc.add(f'<p class="meta">base sha {_esc(overlap.get("base_sha"))} · t = '
            f'{_esc(N.fmt_tol(float(overlap.get("tolerance") or 0.0)))} · {N.fmt_int(overlap.get("numel"))} '
            "elements</p>")
    _overlap_sections(doc, overlap)
    return doc.render(f"Overlap {labels} · Subnetscope report")


def compare_report(items: Sequence[tuple[str, Mapping]], t: float = N.DEFAULT_TOLERANCE) -> str:
    """Several analyses side by side (the compare page), each with its plain summary."""
    doc = _Doc()
    doc.add(f"<h1>Comparison of {len(items)} analyses</h1>")
    doc.figure(FC.compare_bars(items, t))
    for label, result in items:
        doc.h2(label)
        doc.add(f'<p class="meta">base {_esc(_side(result.get("base") or {}))}<br>tuned '
                f'{_esc(_side(result.get("tuned") or {}))}</p>')
        doc.add(f'<p class="summary">{_esc(S.plain_summary(result))}</p>')
    return doc.render("Comparison · Subnetscope report")


def run_report(result: Mapping, t: float | None = None, metric: str = "sparsity", *, title: str | None = None) -> str:
    """A training run's dynamics (the run page's figures)."""
    doc = _Doc()
    run = result.get("run") or {}
    t = float(result.get("tolerance") or N.DEFAULT_TOLERANCE) if t is None else t
    title = title or f"Training run {run.get('id') or ''}"
    doc.add(f"<h1>{_esc(title)}</h1>")
    doc.add(f'<p class="meta">base {_esc(_side(result.get("base") or {}))} · '
            f'{len(result.get("checkpoints") or [])} checkpoints · sets at t = '
            f'{_esc(N.fmt_tol(float(result.get("tolerance") or 0.0)))}</p>')
    for fig in (FR.sparsity_vs_step(result, t), FR.consecutive_vs_step(result, t), FR.ever_vs_final(result),
                FR.layer_step_heatmap(result, t, metric)):
        doc.figure(fig)
    _warnings(doc, result.get("warnings"))
    return doc.render(f"{title} · Subnetscope report")
