"""Plotly figures from result data: pure functions, one module per page.

`analysis`, `overlap`, `compare`, `run` and `tensor` hold the figures of their page; `theme`
holds the colours, scales, common layout and `empty`; `venn` the area-proportional Venn
geometry. The pages and the single-file report (`frontend.report`) draw with the same
functions, so there is never a second copy of a figure.
"""
