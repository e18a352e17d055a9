"""Per-tensor CSV/JSON and the masks download, checked against each other and the result."""

from __future__ import annotations

import csv
import io

import pytest
from service_helpers import done

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def finished(svc):
    return done(svc.client, svc.demo("base"), svc.demo("rl_a"), tolerance=1e-5)


def test_tensors_json_is_the_result_records(svc, finished):
    r = svc.client.get(f"/api/analyses/{finished['id']}/tensors")
    assert r.status_code == 200
    body = r.json()
    assert body["partial"] is False
    assert body["tensors"] == finished["result"]["tensors"]


def test_tensors_csv_has_a_row_per_tensor_with_the_counts(svc, finished):
    r = svc.client.get(f"/api/analyses/{finished['id']}/tensors", params={"format": "csv"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    records = finished["result"]["tensors"]
    assert [row["name"] for row in rows] == [t["name"] for t in records]
    for row, rec in zip(rows, records):
        for key in finished["result"]["summary"]["changed"]:
            assert int(row[f"changed@{key}"]) == rec["changed"][key]
            if rec["numel"]:
                assert float(row[f"sparsity@{key}"]) == pytest.approx(1 - rec["changed"][key] / rec["numel"])
        assert int(row["numel"]) == rec["numel"]
        assert row["shape"] == "x".join(map(str, rec["shape"]))
    assert svc.client.get(f"/api/analyses/{finished['id']}/tensors", params={"format": "xml"}).status_code == 422


def test_masks_download_loads_and_matches_the_counts(svc, finished, tmp_path):
    from worker.engine.masks import load_masks

    r = svc.client.get(f"/api/analyses/{finished['id']}/masks")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/octet-stream"
    path = tmp_path / "masks.safetensors"
    path.write_bytes(r.content)
    masks = load_masks(path)
    key = repr(1e-5)
    records = {t["name"]: t for t in finished["result"]["tensors"]}
    assert set(masks) == set(records)
    for name, mask in masks.items():
        assert list(mask.shape) == records[name]["shape"]
        assert int(mask.sum()) == records[name]["changed"][key], name
