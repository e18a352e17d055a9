"""Dash dashboard served by the FastAPI app at `/`."""
