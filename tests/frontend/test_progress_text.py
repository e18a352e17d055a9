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
