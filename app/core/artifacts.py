"""Where analyses' artifacts (mask files) live, behind one small interface.

Every service process that touches a mask file goes through `artifact_store(settings)`:
the worker that writes an analysis's mask parts (a whole analysis, or one fan-out group
of it), the worker that assembles them (the analysis itself, or the fan-out reduce), the
overlap and training-run reduces that read finished masks, and the web app that serves
them. The engine itself only ever sees a local directory (`analyze(..., masks_dir=)`).

`LocalArtifacts`, the one implementation, keeps everything under `<data_dir>/artifacts/<id>/`
and has nothing to copy: with workers on several machines that directory must be one shared
volume (docker-compose.yml mounts the same `artifacts` volume into every container; on
several hosts, NFS or another shared filesystem). An object store plugs in here: `work_dir`
a local scratch directory, `publish` uploading what a job wrote there (a group's parts, an
analysis's masks file), `gather` downloading every group's parts before the reduce assembles
them, `masks_path` fetching (and caching) a finished masks file for reading.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from app.core.settings import Settings

MASKS_FILE = "masks.safetensors"  # as worker.engine.masks writes it (not imported: the web app loads no torch)


class ArtifactStore(ABC):
    """Mask files of analyses, by analysis id."""

    @abstractmethod
    def work_dir(self, analysis_id: str) -> Path:
        """A local directory (created) where a job writes the analysis's mask parts (`parts/`) and
        where the whole analysis, or its fan-out reduce, assembles `masks.safetensors`."""

    @abstractmethod
    def publish(self, analysis_id: str) -> None:
        """After a job wrote into work_dir (a group's parts, or the assembled masks): make it visible
        to every other machine."""

    @abstractmethod
    def gather(self, analysis_id: str) -> None:
        """Before a fan-out reduce assembles the masks: every group's parts, from whichever machine
        wrote them, into this machine's work_dir."""

    @abstractmethod
    def masks_path(self, analysis_id: str) -> Path | None:
        """A local path to read the finished masks file from, or None when it is gone."""


class LocalArtifacts(ArtifactStore):
    """`root/<id>/`: a directory every worker and the web app mount (the shared data volume)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def work_dir(self, analysis_id: str) -> Path:
        path = self.root / analysis_id
        path.mkdir(parents=True, exist_ok=True)
        return path

    def publish(self, analysis_id: str) -> None:
        pass  # written in place on the shared volume

    def gather(self, analysis_id: str) -> None:
        pass  # every group wrote its parts into the same shared directory

    def masks_path(self, analysis_id: str) -> Path | None:
        path = self.root / analysis_id / MASKS_FILE
        return path if path.is_file() else None


def artifact_store(settings: Settings) -> ArtifactStore:
    """The deployment's artifact store: the one place to plug another implementation in."""
    return LocalArtifacts(settings.artifacts_dir)
