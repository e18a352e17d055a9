"""The size of a lossless patch, estimated from the counts an analysis already has.

Per compared tensor of n elements with k whose bits differ (changed at t = 0; -0/+0 flips are
not counted there, NaNs are): the mask costs about n * H(k/n) / 8 bytes (zstd's Huffman stage
over the packed bits), each changed value the entropy of its ULP-distance bucket plus the bits
that pick a distance inside the bucket plus a sign bit (the zigzag key delta of codec.py), a
NaN its full width. Bytes no compared tensor accounts for (new rows and tensors, tensors of
other shapes, headers) are carried whole at WHOLE_RATIO. Constants were fitted on
bench/synth.py's pair and the demo family (docs/PATCHES.md); the exported size is tested to
fall within 10 % of the estimate.
"""

from __future__ import annotations

import math

MASK_FACTOR = 1.02
VALUE_FACTOR = 1.05
WHOLE_RATIO = 0.8
FRAME_BYTES = 24  # two zstd frames per chunk
RECORD_BYTES = 640  # the tensor's manifest record, payload digest and header entry
ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8, "float8_e4m3fn": 1, "float8_e5m2": 1}


def _h(p: float) -> float:
    return 0.0 if p <= 0 or p >= 1 else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def value_bits(ulp: list[int]) -> float:
    """Bits per changed value from its ULP-distance histogram (buckets 1, 2, 3-4, 5-8, ...)."""
    total = sum(ulp)
    if not total:
        return 0.0
    bits = 1.0  # the sign
    for j, c in enumerate(ulp):
        if c:
            p = c / total
            bits += -p * math.log2(p) + p * max(0, j - 1)
    return bits


def tensor_bytes(record: dict) -> float:
    n = record["numel"]
    k = record["changed"].get("0.0", 0)
    if n == 0 or k == 0:
        return RECORD_BYTES
    width = ITEMSIZE.get(record.get("tuned_dtype", ""), 2)
    nan = record.get("nan", 0)
    chunks = math.ceil(n / (1 << 23))
    mask = MASK_FACTOR * n * _h(k / n) / 8
    values = VALUE_FACTOR * (k - nan) * value_bits(record.get("ulp") or []) / 8 + nan * width
    return mask + values + chunks * FRAME_BYTES + RECORD_BYTES


def estimate(result: dict, tuned_bytes: int) -> dict:
    """{"bytes", "share", "tuned_bytes"}: the patch that turns the result's base into its tuned side."""
    compared = sum(r["numel"] * ITEMSIZE.get(r.get("tuned_dtype", ""), 2) for r in result["tensors"])
    rest = max(0, tuned_bytes - compared)
    size = sum(tensor_bytes(r) for r in result["tensors"]) + WHOLE_RATIO * rest + 4096
    size = int(size)
    return {"bytes": size, "share": size / tuned_bytes if tuned_bytes else None, "tuned_bytes": tuned_bytes}
