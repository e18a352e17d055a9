"""Lossless patches: rebuild a finetuned checkpoint's exact bytes from its base.

`format` is the container (a safetensors file with a checksummed manifest), `codec` the
per-chunk encoding of changed bits, `export` writes a patch from a (base, tuned) pair,
`apply` rebuilds the tuned checkpoint into a directory after verifying the base. The
container is documented in docs/PATCHES.md.
"""
