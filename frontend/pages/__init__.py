"""Dash pages: each module has `layout(query)` (or `layout(id, query)`) and `register(app, api)`."""
