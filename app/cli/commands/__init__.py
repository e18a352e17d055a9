"""Subcommands of the `subnetscope` CLI, grouped by what they need to run."""
