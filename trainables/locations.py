"""Where a search's files go. One layout whatever the flags: under a storage root (`--storage`, a
local path or a URI; by default ./kdx_runs), Ray's results in `ray_results/<experiment>` and the
teacher store in `teachers/`. The tracking store is separate (`--tracking-uri`; by default SQLite
under ./kdx_runs). The search's parent run records its root (trainables/tracking/parent.py), so a
confirmation or a resume finds the search's files without being told again."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from explorer.tracking import RUN_DIR, absolute_tracking_uri, default_tracking_uri

RESULTS_DIR, TEACHERS_DIR = "ray_results", "teachers"


@dataclass
class Locations:
    root: str  # the storage root (local path or URI)
    storage: str  # Ray results (local path or URI)
    store_root: str  # teacher store (local path or URI)
    tracking_uri: str

    def experiment_path(self, name: str) -> str:
        """Where Ray Tune keeps the experiment `name`."""
        return f"{self.storage}/{name}"


def locations(storage: str | None = None, tracking_uri: str | None = None) -> Locations:
    """Where results, teachers and runs go: under ./kdx_runs unless told otherwise; all absolute."""
    root = storage or str(Path.cwd() / RUN_DIR)
    root = root.rstrip("/") if "://" in root else str(Path(root).resolve())
    return Locations(root, f"{root}/{RESULTS_DIR}", f"{root}/{TEACHERS_DIR}",
                     absolute_tracking_uri(tracking_uri or default_tracking_uri()))


def move_aside(loc: Locations, names: list[str]) -> None:
    """--fresh: an earlier search's Ray results move to `<name>.before-<time>`, so Tune starts anew."""
    import pyarrow.fs as pafs

    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in names:
        path = loc.experiment_path(name)
        fs, where = pafs.FileSystem.from_uri(path) if "://" in path else (pafs.LocalFileSystem(), path)
        if fs.get_file_info(where).type != pafs.FileType.NotFound:
            fs.move(where, f"{where}.before-{stamp}")
