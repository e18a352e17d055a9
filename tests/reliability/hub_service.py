"""The service wired to a loopback Hugging Face Hub (tests/hubserver.py) instead of huggingface.co.

The Hub server runs in the test process; the web app and the worker are separate
processes that reach it through HF_ENDPOINT, exactly as they would reach the real Hub.
"""

from __future__ import annotations

import contextlib
import json
import pickle
from pathlib import Path

from checkpoint_files import broken_files, llama_config, nudge, small_state, write_checkpoint
from hubserver import HubServer  # tests/ is on sys.path (tests/conftest.py's directory)
from support.service import start_service

# A token shaped like a real one, unique enough that finding it anywhere is a leak.
TOKEN = "hf_ReliabilitySuiteSecret7f3c9a1e5d2b8046"
GATED = "org/gated-tuned"
# A second gated repo whose token the tests revoke between submission and the run.
GATED_REVOCABLE, TOKEN_REVOCABLE = "org/gated-revocable", "hf_RevocableSecret0a1b2c3d4e5f60718293"

BASE, TUNED = "org/base", "org/tuned"


def write_repos(root: Path) -> None:
    """Repos as directories (see HubServer): `org/name` is branch main, `org/name@rev` a branch."""
    base = small_state(21)
    write_checkpoint(root / "org" / "base", base)
    write_checkpoint(root / "org" / "tuned", nudge(base))
    write_checkpoint(root / "org" / "tuned@v2", nudge(base, every=3))
    write_checkpoint(root / GATED, nudge(base, every=5))
    write_checkpoint(root / GATED_REVOCABLE, nudge(base, every=4))

    pickle_only = root / "org" / "pickle-only"
    pickle_only.mkdir(parents=True, exist_ok=True)
    (pickle_only / "pytorch_model.bin").write_bytes(pickle.dumps({"not": "to be loaded"}))
    (pickle_only / "config.json").write_text('{"architectures": ["LlamaForCausalLM"], "model_type": "llama"}')

    truncated = root / "org" / "truncated"
    truncated.mkdir(parents=True, exist_ok=True)
    (truncated / "model.safetensors").write_bytes(broken_files()["truncated"])
    (truncated / "config.json").write_text(json.dumps(llama_config(hidden_size=4)))


@contextlib.contextmanager
def hub_and_service(root: Path):
    """(hub, svc): a loopback Hub with the repos above, and the whole service pointed at it."""
    repos = root / "repos"
    write_repos(repos)
    with HubServer(repos, gated={GATED: {TOKEN}, GATED_REVOCABLE: {TOKEN_REVOCABLE}}) as hub:
        svc = start_service(root / "svc", HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
        try:
            yield hub, svc
        finally:
            svc.close()
