"""Every curl example in docs/API.md, run with real curl against the real service.

The documented ids become real ones: the doc's analysis id is the one its own first POST
returns, the second id a real analysis of the other demo finetune, `<id>` the id the last POST to
that resource returned and `<etag>` the ETag the previous command printed. Only examples that
need what a test machine has not got are skipped (a Hub repo, a deployment token); each command
must answer the status its comment documents, or a success when it documents none.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from run_checkpoints import write_run

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"
DOC_ID, DOC_ID2 = "4fb3b33da82fc145", "9a0c7e51d2b84f11"
NEEDS_ELSEWHERE = ("org/", "$SUBNETSCOPE_API_TOKEN")  # the Hub; a shared deployment's token


def examples() -> list[list[tuple[str, str]]]:
    """Per ```bash block: (command, the comment that follows it) with continuations joined."""
    blocks = re.findall(r"^\s*```bash\n(.*?)^\s*```", DOC.read_text(), flags=re.S | re.M)
    out = []
    for block in blocks:
        cmds: list[tuple[str, str]] = []
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            line = line.strip()
            if line.startswith("curl "):
                cmd, _, trailing = line.partition("   # ")
                cmds.append((cmd.strip(), trailing))
            elif line.startswith("#") and cmds and not cmds[-1][1]:
                cmds[-1] = (cmds[-1][0], line.lstrip("# "))
        if cmds:
            out.append(cmds)
    return out


def test_doc_has_examples_to_run():
    flat = [c for block in examples() for c, _ in block]
    assert len(flat) >= 15 and any("/api/overlaps" in c for c in flat) and any("/api/runs" in c for c in flat)


def test_every_api_md_example_runs(svc, tmp_path):
    # the runs example's checkpoints, where the doc puts them
    runs = svc.local_root / "runs"
    if not (runs / "rl_run").exists():
        # its own seed: the same checkpoints as test_runs_api's would be the same run, already done there
        base_dir, run_dir, _ = write_run(tmp_path / "runs", seed=29)
        shutil.copytree(base_dir, runs / "base")
        shutil.copytree(run_dir, runs / "rl_run")
    other = svc.client.post("/api/analyses", json={"base": svc.demo("base"), "tuned": svc.demo("rl_b"),
                                                   "tolerance": 1e-5}).json()["id"]
    ids = {DOC_ID: None, DOC_ID2: other}
    ran, skipped, last_ids, last_out = 0, [], {}, ""
    for block in examples():
        for cmd, comment in block:
            if any(s in cmd for s in NEEDS_ELSEWHERE):
                skipped.append(cmd)
                continue
            cmd = cmd.replace("$API", svc.base_url)
            if DOC_ID in cmd and ids[DOC_ID] is None:
                raise AssertionError(f"{cmd} uses the analysis id before the doc's submission made it")
            for doc_id, real in ids.items():
                if real:
                    cmd = cmd.replace(doc_id, real)
            resource = re.search(r"/api/(\w+)", cmd).group(1)
            if "<id>" in cmd:
                assert resource in last_ids, f"{cmd}: no earlier POST to /api/{resource} gave an id"
                cmd = cmd.replace("<id>", last_ids[resource])
            if "<etag>" in cmd:
                etag = re.search(r"^etag: (\S+)", last_out, flags=re.I | re.M).group(1).strip('"')
                cmd = cmd.replace("<etag>", etag)
            status_flag = "" if " -w " in cmd else " -w '\\n%{http_code}'"
            proc = subprocess.run(cmd + status_flag, shell=True, capture_output=True, text=True, cwd=tmp_path,
                                  timeout=60)
            assert proc.returncode == 0, (cmd, proc.stderr)
            body, _, status = proc.stdout.rpartition("\n") if status_flag else ("", "", proc.stdout.strip())
            status = int(status.strip())
            documented = re.match(r"(\d{3})\b", comment)
            if documented and documented.group(1) == "202":
                assert status in (200, 202), (cmd, status, body)  # 200: already computed (doc: "answers 200")
            elif documented and documented.group(1) != "503":
                assert status == int(documented.group(1)), (cmd, status, body)
            else:
                assert status < 400, (cmd, status, body)
            if cmd.startswith("curl -s -X POST") and body.strip().startswith("{"):
                last_ids[resource] = json.loads(body)["id"]
                if ids[DOC_ID] is None and resource == "analyses" and "demo/rl_a" in cmd:
                    ids[DOC_ID] = last_ids[resource]
                    _wait_done(svc, ids[DOC_ID])
                    _wait_done(svc, other)
            last_out = proc.stdout
            ran += 1
    assert ran >= 15 and len(skipped) <= 3, (ran, skipped)
    assert any(p.name.endswith("-masks.safetensors") for p in tmp_path.iterdir())  # -OJ saved the download


def _wait_done(svc, analysis_id: str) -> None:
    from support.polling import wait_status

    assert wait_status(svc.client, analysis_id, timeout=150)["status"] == "done"
