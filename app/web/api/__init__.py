"""Thin routers of the JSON API, one module per resource."""
