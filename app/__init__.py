"""Subnetscope service: settings, API, store, job submission and the CLI."""
