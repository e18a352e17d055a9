"""Reliability suite: the shared `svc` and `keeps_serving` fixtures come from tests/conftest.py.

This directory has no __init__.py, so pytest puts it on sys.path and the helper
modules (`api`, `checkpoint_files`) import by their plain names; made explicit
here so it holds under any import mode.
"""

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
