"""`subnetscope report RESULT.json [--overlap OVERLAP.json] -o report.html`: the single-file report."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser(
        "report", help="write a self-contained HTML report of a result, an overlap or a training run",
        description="Write one HTML file (plotly.js inlined, no network request of any kind, opens from file://) "
                    "from a JSON document that `analyze --json`, `overlap --json`, `dynamics --json` or the API "
                    "wrote: header, summary cards, plain summary, tolerance curve, layer x module heatmap, "
                    "precision, rank and geometry when computed, top tensors and the study's value for its pairs.")
    p.add_argument("result", type=Path, metavar="RESULT.json",
                   help="an analysis result (schema 1), an overlap or a training-run dynamics result")
    p.add_argument("--overlap", type=Path, default=None, metavar="OVERLAP.json",
                   help="add this overlap (of the analysis with others) to an analysis report")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="where to write the HTML (default: RESULT with .html instead of .json)")
    p.set_defaults(func=run_report)


def _load(path: Path) -> dict:
    doc = json.loads(path.read_text())
    # the API's GET /api/analyses/{id} wraps the result; accept it as saved from there too
    return doc["result"] if isinstance(doc.get("result"), dict) and "summary" not in doc else doc


def run_report(args) -> int:
    from subnetscope.reports import render

    try:
        doc = _load(args.result)
        overlap = _load(args.overlap) if args.overlap else None
        page = render(doc, overlap=overlap)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: cannot read {args.result}: {exc}", file=sys.stderr)
        return 2
    out = args.output or args.result.with_suffix(".html")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"{out}  {len(page.encode()) / 1e6:.2f} MB")
    return 0
