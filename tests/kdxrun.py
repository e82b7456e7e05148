"""The one way tests run the `kdx` command (a real subprocess) and read back what a search logged.

`kdx(cwd, *args)` runs the installed `kdx` entry point in `cwd` with this process's environment (plus
`env`), capturing its output; `start(...)` is the same without waiting. `TINY` is tests/specs/tiny.yaml
(the quickstart shrunk), `write_spec` writes it with top-level changes, `runs_of` / `by_role` /
`completed_trials` read the MLflow store a search wrote."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "tests" / "specs"
TINY = yaml.safe_load((SPECS / "tiny.yaml").read_text())
KDX = [str(Path(sys.executable).with_name("kdx"))]


def kdx(cwd: Path, *args, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """`kdx *args` in `cwd`, to the end; stdout and stderr captured as text."""
    return subprocess.run([*KDX, *map(str, args)], cwd=cwd, env=os.environ | (env or {}), capture_output=True,
                          text=True, timeout=timeout)


def start(cwd: Path, *args, log: Path, env: dict | None = None) -> subprocess.Popen:
    """`kdx *args` in `cwd`, not waited for; stdout and stderr go to `log` (closed here once the child holds it)."""
    with open(log, "w") as f:
        return subprocess.Popen([*KDX, *map(str, args)], cwd=cwd, env=os.environ | (env or {}), stdout=f,
                                stderr=subprocess.STDOUT)


def write_spec(path: Path, **changes) -> Path:
    spec = json.loads(json.dumps(TINY)) | changes
    path.write_text(yaml.safe_dump(spec))
    return path


def sqlite_uri(cwd: Path) -> str:
    """The tracking store a search run in `cwd` writes by default."""
    return f"sqlite:///{cwd / 'kdx_runs' / 'mlflow.db'}"


def runs_of(uri: str, name: str):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def completed_trials(uri: str, name: str) -> int:
    """Completed trial runs so far (0 while the experiment does not exist yet)."""
    from mlflow.tracking import MlflowClient

    from explorer.tracking import STATUS_TAG

    try:
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            return 0
        runs = client.search_runs([exp.experiment_id], filter_string=f"tags.{STATUS_TAG} = 'completed'")
    except Exception:  # the store is being created by the search
        return 0
    return len(runs)


def by_role(runs, role):
    from explorer.tracking import ROLE_TAG

    return [r for r in runs if r.data.tags.get(ROLE_TAG) == role]


def timed(cwd: Path, *args, **kwargs) -> tuple[subprocess.CompletedProcess, float]:
    """`kdx(cwd, *args)` and the seconds it took."""
    import time

    begun = time.monotonic()
    proc = kdx(cwd, *args, **kwargs)
    return proc, time.monotonic() - begun
