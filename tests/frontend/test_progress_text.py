"""The analysis page's progress line, for one run and for an analysis fanned out over workers."""

from __future__ import annotations


def _text(parts) -> str:
    return "".join(p if isinstance(p, str) else str(p.children) for p in parts)


def test_progress_line_names_the_groups_of_a_fanned_out_analysis():
    from frontend.pages.analysis import progress_text

    one = {"status": "running", "progress": {"tensors_done": 3, "tensors_total": 9, "bytes_done": 10,
                                             "bytes_total": 30, "current": "model.norm.weight"}}
    assert "groups" not in _text(progress_text(one))
    fanned = {"status": "running", "progress": {**one["progress"], "groups": {"total": 8, "done": 3, "running": 4}}}
    line = _text(progress_text(fanned))
    assert "groups: 3 of 8 done, 4 running" in line and "3 / 9 tensors" in line and "model.norm.weight" in line


def test_progress_line_gives_the_svd_phase_its_estimate_then_its_own_eta():
    from frontend.pages.analysis import progress_text

    base = {"tensors_done": 0, "tensors_total": 90, "bytes_done": 0, "bytes_total": 30}
    queued_estimate = {"status": "running", "progress": {**base, "svd_matrices_total": 224, "svd_estimate_s": 372.0}}
    assert "rank of 224 matrices: about 6 min 12 s on this worker" in _text(progress_text(queued_estimate))
    running = {"status": "running", "progress": {**base, "svd_matrices_total": 224, "svd_matrices_done": 20,
                                                 "svd_estimate_s": 372.0, "svd_eta_s": 95.0}}
    line = _text(progress_text(running))
    assert "SVDs 20 / 224 matrices, ETA 1 min 35 s" in line and "about" not in line
    assert "SVD" not in _text(progress_text({"status": "running", "progress": base}))  # rank off: nothing
