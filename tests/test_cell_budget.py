"""An equal search budget per cell (issue 10): `search.trials_per_cell` runs the teacher x stop-epoch cells
as a grid with a TPE of their own inside each; the refusals; the searcher's bookkeeping and resume; and
a real search whose every cell gets exactly its budget."""

import copy

import pytest
from kdxrun import TINY

from explorer.errors import KdxError
from explorer.spec.search import parse_spec


def cell_spec(per_cell=2, **search):
    data = copy.deepcopy(TINY)
    data["search"].pop("num_samples")
    data["search"] |= {"trials_per_cell": per_cell} | search
    return data


def test_cells_are_the_teacher_x_stop_grid_and_set_the_trial_count():
    from trainables.search import expected_trials

    spec = parse_spec(cell_spec(3))
    cells = spec.search_cells()
    assert cells == [{"teacher": t, "teacher_stop_epoch": s} for t in ("cnn1d_w8", "cnn1d_w16") for s in (2, 4)]
    assert expected_trials(spec, None) == 12
    assert parse_spec(TINY).search_cells() == []  # without trials_per_cell: one TPE over everything


@pytest.mark.parametrize("change,field", [
    ({"num_samples": 8}, "search.num_samples"),
    ({"algorithm": "random"}, "search.trials_per_cell"),
])
def test_refusals_name_the_field(change, field):
    with pytest.raises(KdxError) as e:
        parse_spec(cell_spec(2, **change))
    assert str(e.value).startswith(f"{field}: got") and str(e.value).count(". ") == 0


def test_refused_when_only_the_cells_are_searched():
    data = cell_spec(2)
    data["distill"] = {"temperature": 4.0, "alpha": 0.9}
    with pytest.raises(KdxError, match=r"^search.trials_per_cell: got 2, but only the cell params"):
        parse_spec(data)


def test_searcher_balances_cells_routes_results_and_restores(tmp_path):
    from ray.tune.search import Searcher

    from trainables.searcher import tune_setup

    data = cell_spec(2)
    data["seeds"] = [0]  # one seed: no seed axis for the TPEs
    data["search"]["points_to_evaluate"] = [{"teacher": "cnn1d_w16", "teacher_stop_epoch": 4, "temperature": 3.0,
                                             "alpha": 0.5}]
    spec = parse_spec(data)
    _, searcher, n = tune_setup(spec, None)
    assert n == 8
    given = []
    for i in range(5):
        config = searcher.suggest(f"t{i}")
        given.append((config["teacher"], config["teacher_stop_epoch"]))
        assert set(config) == {"teacher", "teacher_stop_epoch", "temperature", "alpha"}
        searcher.on_trial_complete(f"t{i}", {"val_acc": 0.5 + i / 100, "epoch": 4, "training_iteration": 4})
    # one trial per cell first (the least-served cell goes next), then the second round begins
    assert sorted(given[:4]) == sorted((t, s) for t in ("cnn1d_w8", "cnn1d_w16") for s in (2, 4))
    assert {"temperature": 3.0, "alpha": 0.5} == {k: searcher.inner[3]._ot_study.trials[0].params[k]
                                                  for k in ("temperature", "alpha")}  # the cell's own point
    # each cell's TPE saw only its own trials
    assert [len(s._ot_study.trials) for s in searcher.inner] == [2, 1, 1, 1]
    searcher.save(tmp_path / "searcher.pkl")
    _, restored, _ = tune_setup(spec, None)
    restored.restore(tmp_path / "searcher.pkl")
    rest = [restored.suggest(f"r{i}") for i in range(3)]
    assert all(isinstance(c, dict) for c in rest) and restored.suggest("r3") == Searcher.FINISHED
    assert sorted(restored.given) == [2, 2, 2, 2]


def test_a_real_search_gives_every_cell_its_budget(fused_search):
    """conftest.py's `fused_search` runs tiny.yaml with `trials_per_cell: 1` (and its seeds fused, ASHA on):
    4 search trials, one in each teacher x stop-epoch cell."""
    _, proc, _, by_trial = fused_search
    assert "4 = 1 per cell x 4 cells" in proc.stdout
    searched = [members for members in by_trial.values() if members[0].data.tags["kdx.kind"] == "search"]
    for members in searched:  # the seeds of a fused trial are its members: one cell
        assert len({(r.data.params["teacher"], r.data.params["teacher_stop_epoch"]) for r in members}) == 1
    cells = sorted((m[0].data.params["teacher"], m[0].data.params["teacher_stop_epoch"]) for m in searched)
    assert cells == sorted((t, s) for t in ("cnn1d_w8", "cnn1d_w16") for s in ("2", "4"))
