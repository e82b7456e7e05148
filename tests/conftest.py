"""Session-wide test resources: one local Ray cluster that the end-to-end `kdx search` / `kdx confirm`
calls join (each would otherwise start and stop a Ray of its own: about 6-10 s a call on 2 cores).

Tests about Ray's local default (no --address: Ctrl-C, SIGKILL, crash retries, resources, refusals)
do not use it.

scripts/test runs the suite on two pytest-xdist workers (`--dist loadgroup`): each worker has its own
shared Ray, and tests that share a module- or session-scoped fixture stay on one worker, so that the
fixture (a finished search, trained models) is built once."""

from collections import defaultdict
from dataclasses import dataclass

import pytest
from kdxrun import TINY, by_role, kdx, runs_of, sqlite_uri, write_spec
from procs import ray_head


@dataclass(frozen=True)
class SharedRay:
    address: str
    env: dict  # what a process joining it needs in its environment

    @property
    def args(self) -> tuple[str, str]:
        """The flags that make a kdx command join this cluster."""
        return "--address", self.address


PER_WORKER = {"shared_ray", "tmp_path_factory", "worker_id", "testrun_uid"}  # cheap or per worker by design


def pytest_collection_modifyitems(config, items):
    """Keep the tests that share a built fixture on one xdist worker (`--dist loadgroup` reads the
    `xdist_group` mark; without xdist the mark does nothing)."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        shared = sorted(
            (defs[-1].scope, name, defs[-1].baseid) for name, defs in (info.name2fixturedefs.items() if info else ())
            if defs and defs[-1].scope in ("module", "session") and name not in PER_WORKER)
        if shared:  # a session fixture outranks a module one ("module" < "session" in the sort)
            scope, name, baseid = shared[-1]
            group = name if scope == "session" else item.module.__name__
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def shared_ray():
    """A 2-CPU Ray head started once for the session (by tests/procs.py, stopped by PID at the end)."""
    with ray_head(num_cpus=2) as (address, env):
        yield SharedRay(address, env)


@pytest.fixture(scope="session")
def fused_search(tmp_path_factory, shared_ray):
    """tests/specs/tiny.yaml searched with every seed of a config fused into one trial (`search.fuse_seeds`,
    tests/test_fused_search.py) and one trial per teacher x stop-epoch cell (`search.trials_per_cell: 1`,
    tests/test_cell_budget.py), ASHA with grace 2: 4 fused search trials and a fused CE baseline trial.
    (cwd, the completed `kdx search --json`, its MLflow runs, the trial runs by Ray trial id)."""
    cwd = tmp_path_factory.mktemp("fused_search")
    search = {k: v for k, v in TINY["search"].items() if k != "num_samples"}
    search |= {"trials_per_cell": 1, "fuse_seeds": True, "asha": {"grace_period": 2, "reduction_factor": 2}}
    spec = write_spec(cwd / "tiny.yaml", search=search)
    proc = kdx(cwd, "search", spec, "--json", *shared_ray.args, env=shared_ray.env)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    _, runs = runs_of(sqlite_uri(cwd), "tiny")
    by_trial = defaultdict(list)
    for r in by_role(runs, "trial"):
        by_trial[r.data.tags["trial_id"]].append(r)
    return cwd, proc, runs, by_trial
