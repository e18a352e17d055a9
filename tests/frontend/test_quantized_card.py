"""The tensor page's card for quantized storage (block-scaled fp8, MXFP4): the raw-code view beside the values."""

from __future__ import annotations

import json

from frontend.pages.tensor import cards


def _text(component) -> str:
    return json.dumps(component.to_plotly_json(), default=lambda c: c.to_plotly_json() if hasattr(c, "to_plotly_json") else str(c))


RECORD = {"numel": 1000, "changed": {"1e-05": 400}, "curve_changed": None, "row_coverage": 0.5, "col_coverage": 0.5,
          "ratio": 0.1, "max_abs_delta": 0.01, "rank": None, "rank_ratio": None, "geometry": None}


def test_both_sides_quantized_alike_show_codes_and_scale_blocks():
    q = {"base": "fp8 e4m3, 128x128 f32 scales", "tuned": "fp8 e4m3, 128x128 f32 scales",
         "scale_blocks": 186, "scale_blocks_changed": 49, "codes_changed": 1234}
    text = " ".join(_text(c) for c in cards({**RECORD, "quantization": q}, 1e-5, None))
    assert "Stored codes changed" in text and "1,234" in text and "49 of 186" in text and "fp8 e4m3" in text


def test_one_quantized_side_says_values_were_compared():
    q = {"base": "mxfp4 e2m1, e8m0 scales per 32", "tuned": None}
    text = " ".join(_text(c) for c in cards({**RECORD, "quantization": q}, 1e-5, None))
    assert "mxfp4 e2m1, e8m0 scales per 32 vs unquantized" in text and "Stored codes" not in text


def test_unquantized_tensors_have_no_such_card():
    text = " ".join(_text(c) for c in cards(RECORD, 1e-5, None))
    assert "Stored codes" not in text and "Quantized storage" not in text
