"""The MLflow UI as users open it, rendered by headless Chromium against a real `mlflow server`: a kdx
experiment opens in the classic ML view (its runs table, not the GenAI overview), and the parent run
of a search shows its headline metrics.

The experiment and the parent run are made by kdx's own code: `trainables.tracking.parent.ParentRun` (which
creates the experiment with `trainables.tracking.store.experiment_id`, tagged for the classic view), the headline
numbers by `analysis.cells.headline_metrics` on the confirmed answer of tests/test_cells.py's frame, put
on the parent run by `analysis.attach_to_parent` (as `kdx analyze` does). A real search would take minutes.

MLflow 3.17 (measured here): the view an experiment opens in follows the UI's global switch (GenAI |
Model training: the URL's `workflowType`, else the browser's saved choice, GenAI by default), not the
experiment's `mlflow.experimentKind` tag: a fresh browser opens `#/experiments/ID` in the GenAI
overview, tag or no tag. The classic view is `classic_url`'s address (`?workflowType=machine_learning`).
"""

import html
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from procs import mlflow_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PNG = b"\x89PNG\r\n\x1a\n"


def classic_url(server: str, experiment_id: str, run_id: str | None = None) -> str:
    """The address of an experiment (or one of its runs) in the classic ML view: the one kdx prints."""
    from trainables.tracking.store import classic_page

    return f"{server}/{classic_page(experiment_id, run_id)}"


def render(url: str, profile: Path, must_show: list[str], shot: Path | None = None) -> tuple[str, str]:
    """(title, visible text) of the page once the React app has rendered it: Chromium's DOM after a
    virtual-time budget, with a fresh profile (no saved UI choices); a longer budget when the text
    `must_show` is not there yet (a loaded machine)."""
    for budget_ms in (20_000, 60_000):
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget_ms}", "--window-size=1600,1400", "--dump-dom"]
        if shot is not None:
            args.append(f"--screenshot={shot}")
        shutil.rmtree(profile, ignore_errors=True)
        dom = subprocess.run([*args, url], capture_output=True, text=True, timeout=300).stdout
        title = html.unescape((re.search(r"<title>(.*?)</title>", dom, re.S) or [None, ""])[1]).strip()
        body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S)
        text = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body)))
        if all(s in text for s in must_show):
            break
    return title, text


@pytest.fixture(scope="module")
def search(tmp_path_factory):
    """A kdx experiment with a finished parent search run carrying the headline metrics, on a real server."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium not installed: apt-get install chromium to run the MLflow UI check")
    from mlflow.tracking import MlflowClient
    from cellframes import SPEC, confirm_rows, frame

    from analysis import attach_to_parent
    from analysis.cells import confirmed_cells, headline_metrics
    from explorer.spec.search import parse_spec
    from trainables.locations import locations
    from trainables.plan import make_plan
    from trainables.tracking.parent import ParentRun
    from trainables.tracking.store import CLASSIC_VIEW

    tmp = tmp_path_factory.mktemp("mlflow_ui")
    with mlflow_server(tmp) as uri:
        spec = parse_spec(SPEC)
        loc = locations(storage=str(tmp / "results"), tracking_uri=uri)
        plan = make_plan(spec, loc.store_root)
        client = MlflowClient(tracking_uri=uri)
        parent = ParentRun(uri)
        exp_id, run_id = parent.open(spec, yaml.safe_dump(SPEC), plan, loc)
        parent.close("FINISHED")
        headline = headline_metrics(confirmed_cells(frame(plan, confirm_rows())))
        assert attach_to_parent([], spec.name, uri, metrics=headline) == run_id
        assert client.get_experiment(exp_id).tags.items() >= CLASSIC_VIEW.items()
        run_name = client.get_run(run_id).info.run_name
        yield {"uri": uri, "exp_id": exp_id, "run_id": run_id, "run_name": run_name, "headline": headline,
               "tmp": tmp}


def test_the_experiment_opens_in_the_classic_view(search):
    title, text = render(classic_url(search["uri"], search["exp_id"]), search["tmp"] / "profile_exp",
                         [search["run_name"]], shot=search["tmp"] / "experiment.png")
    # the classic runs table (its title, tabs and columns), not the GenAI overview (traces, sessions, judges)
    assert title.startswith(f"Runs - Experiment {search['exp_id']}"), title
    assert "Run Name" in text and "Duration" in text and "Model registry" in text, text[:2000]
    assert "Observability" not in text and "Judges" not in text and "Sessions" not in text, text[:2000]
    assert search["run_name"] in text and search["run_name"].startswith("cells search "), text[:2000]
    shot = search["tmp"] / "experiment.png"
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 10_000


def test_the_parent_run_shows_its_headline_metrics(search):
    headline = search["headline"]
    assert {"best_val_acc", "best_test_acc", "kd_gain_test", "kd_gain_test_low", "kd_gain_test_high"} <= set(headline)
    shot = search["tmp"] / "parent_run.png"
    title, text = render(classic_url(search["uri"], search["exp_id"], search["run_id"]), search["tmp"] / "profile_run",
                         [f"Metrics ({len(headline)})"], shot=shot)
    assert title.startswith(f"Run {search['run_id']}"), title
    assert f"Metrics ({len(headline)})" in text and search["run_name"] in text, text[:3000]
    for name, value in headline.items():  # each metric's row: its name, then its value
        shown = re.search(rf"(?<![\w.]){re.escape(name)} (-?[0-9.]+(?:e-?[0-9]+)?)", text)
        assert shown and float(shown[1]) == pytest.approx(value, rel=1e-9), (name, value, text[:3000])
    assert shot.read_bytes()[:8] == PNG and shot.stat().st_size > 10_000
