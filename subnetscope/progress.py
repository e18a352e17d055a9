"""Progress bars for the engine's callbacks: tqdm on a terminal (CLI), tqdm.auto in Jupyter."""

from __future__ import annotations

import sys


def _tqdm(notebook: bool):
    if notebook:
        from tqdm.auto import tqdm
    else:
        from tqdm import tqdm
    return tqdm


def byte_bar(label: str, *, quiet: bool = False, notebook: bool = False):
    """(on_progress callback, close) drawing one analysis as a bar in bytes."""
    if quiet:
        return None, lambda: None
    bar = _tqdm(notebook)(total=0, unit="B", unit_scale=True, desc=label, file=sys.stderr, leave=False)

    def update(p) -> None:
        bar.total = p.bytes_total
        bar.n = p.bytes_done
        svd = f" · SVDs of {p.current.removeprefix('geometry ')}" if (p.current or "").startswith("geometry ") else ""
        bar.set_postfix_str(f"{p.tensors_done}/{p.tensors_total} tensors{svd}", refresh=False)
        bar.refresh()

    return update, bar.close


class RunBar:
    """A bar over a run's checkpoints; the postfix says which comparison runs and how far it is."""

    def __init__(self, total: int, label: str, *, quiet: bool = False, notebook: bool = False):
        self.bar = None if quiet else _tqdm(notebook)(total=total, unit="ckpt", desc=label, file=sys.stderr,
                                                      leave=False)
        self.what = ""

    def doing(self, what: str) -> None:
        self.what = what
        if self.bar is not None:
            self.bar.set_postfix_str(what)

    def progress(self, p) -> None:
        if self.bar is None or not p.bytes_total:
            return
        shown = f"{self.what} {100 * p.bytes_done / p.bytes_total:.0f}%"
        if shown != self.bar.postfix:
            self.bar.set_postfix_str(shown)

    def step(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
