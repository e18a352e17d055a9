"""Disk full while writing artifacts: the analysis fails with `disk_full`, the service keeps serving.

Weights are never downloaded (Hub checkpoints are read with range requests), so the
only thing an analysis writes to disk is its masks. The worker is started with a
tiny tmpfs mounted over that analysis's artifacts directory, in a mount namespace
of its own: the kernel answers ENOSPC exactly as on a full disk, and nothing else on
the machine is affected.
"""

from __future__ import annotations

import pytest
from api import get, submit
from checkpoint_files import write_big_pair
from services import start_worker_with_small_disk, tmpfs_mount_works
from support.polling import wait_status

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(not tmpfs_mount_works(), reason="needs `unshare --mount` and tmpfs mounts (root or user namespaces)"),
]

# 1024 x 1024 tensors: 128 KiB of mask bits each, written in pieces larger than any write
# buffer, so the failure surfaces mid-tensor (the path a real model takes), not at close.
TENSORS, ROWS, COLS = 8, 1024, 1024
SMALL_DISK = "320k"  # room for the mask parts of two and a half tensors


def test_disk_full_while_writing_masks_fails_clearly_and_harms_nothing_else(svc):
    write_big_pair(svc.local_root / "rel" / "diskfull", tensors=TENSORS, rows=ROWS, cols=COLS, seed=5)
    pair = ("local:rel/diskfull/base", "local:rel/diskfull/tuned")

    # Queue it with no worker running, so its id (hence its artifacts directory) is known first.
    svc.stop_worker()
    try:
        r = submit(svc.client, *pair, tolerance=2e-5)
        assert r.status_code == 202, r.text
        aid = r.json()["id"]
        start_worker_with_small_disk(svc, svc.data_dir / "artifacts" / aid, SMALL_DISK)

        failed = wait_status(svc.client, aid, timeout=120)
        assert failed["status"] == "failed", failed
        error = failed["error"]
        assert error["code"] == "disk_full", error
        message = error["message"].lower()
        assert "disk" in message and ("space" in message or "full" in message), error
        assert "traceback" not in message
        assert failed["result"] is None
        assert 0 < len(failed["partial"]) < TENSORS, failed["progress"]  # it failed mid-way, not up front

        # The same worker, its disk still full for that analysis only, serves the others.
        assert svc.client.get("/api/health").status_code == 200
        other = submit(svc.client, svc.demo("base"), svc.demo("sft"), tolerance=2.5e-5)
        assert other.status_code in (200, 202), other.text
        assert wait_status(svc.client, other.json()["id"], timeout=120)["status"] == "done"
        assert get(svc.client, aid)["status"] == "failed"  # and nothing retried it behind our back
    finally:
        svc.stop_worker()
        svc.start_worker()

    # Space back (an ordinary worker): a retry completes, resuming from the recorded tensors.
    retried = svc.client.post(f"/api/analyses/{aid}/retry")
    assert retried.status_code in (200, 202), retried.text
    done = wait_status(svc.client, aid, timeout=120)
    assert done["status"] == "done", done["error"]
    assert done["error"] is None
    assert len(done["result"]["tensors"]) == TENSORS
    masks = svc.client.get(f"/api/analyses/{aid}/masks")
    assert masks.status_code == 200 and len(masks.content) > TENSORS * ROWS * COLS // 8
