"""A search whose trials train every seed of their config as one fused model (`search.fuse_seeds`,
issue 11): one Ray trial per config, one MLflow run per seed, and ASHA and the searcher see the
members' mean. The search is conftest.py's session fixture `fused_search`, which also gives each
teacher x stop-epoch cell its budget (`search.trials_per_cell`: tests/test_cell_budget.py checks that)."""

import glob
import json
import statistics

import pytest
from kdxrun import TINY

from explorer.data.splits import load_splits
from explorer.spec.search import parse_spec
from explorer.tracking import MEMBER_TAG, STATUS_TAG
from explorer.training.loop import Trainer
from trainables.plan import make_plan


def test_each_trial_is_one_config_with_every_seed_as_its_own_run(fused_search):
    _, proc, runs, by_trial = fused_search
    assert "each trial training seeds [0, 1] fused" in proc.stdout
    kinds = [members[0].data.tags["kdx.kind"] for members in by_trial.values()]
    assert sorted(kinds) == ["baseline"] + ["search"] * 4  # one baseline trial for both seeds, 4 search trials
    for members in by_trial.values():
        assert sorted(r.data.params["seed"] for r in members) == ["0", "1"]
        assert all(r.data.tags[MEMBER_TAG] == r.data.params["seed"] for r in members)
        config = [{k: v for k, v in r.data.params.items() if k != "seed"} for r in members]
        assert config[0] == config[1]  # the same config, searched values included
        assert len({r.data.tags[STATUS_TAG] for r in members}) == 1  # pruned or completed together
        assert members[0].data.metrics["val_loss"] != members[1].data.metrics["val_loss"]  # two seeds, two values
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_asha_and_the_searcher_see_the_mean_of_the_members(fused_search):
    cwd, _, _, by_trial = fused_search
    finals = {}
    for path in glob.glob(str(cwd / "kdx_runs" / "ray_results" / "tiny" / "*" / "result.json")):
        rows = [json.loads(line) for line in open(path) if line.strip()]
        finals[rows[-1]["trial_id"]] = rows[-1]
    assert len(finals) == 4 and set(finals) <= set(by_trial)
    for tid, last in finals.items():
        members = {r.data.params["seed"]: r.data.metrics["val_acc"] for r in by_trial[tid]}
        assert {str(m["seed"]): m["val_acc"] for m in last["members"]} == pytest.approx(members)
        assert last["val_acc"] == pytest.approx(statistics.mean(members.values()))


def test_a_fused_baseline_member_is_its_seeds_solo_run(fused_search):
    cwd, _, _, by_trial = fused_search
    (baseline,) = [m for m in by_trial.values() if m[0].data.tags["kdx.kind"] == "baseline"]
    spec = parse_spec(TINY)
    splits = load_splits(spec.data_spec())
    alone = make_plan(spec, str(cwd / "unused_store")).settings({"method": "ce", "teacher": "none", "seed": 1})
    solo = Trainer(alone["train"], splits, device="cpu").run()[-1]
    (member,) = [r for r in baseline if r.data.params["seed"] == "1"]
    assert member.data.metrics["val_acc"] == pytest.approx(solo["val_acc"], abs=1.01 / len(splits.val_y))
    assert member.data.metrics["test_acc"] == pytest.approx(solo["test_acc"], abs=1.01 / len(splits.test_y))


def test_a_student_that_does_not_fuse_is_refused_before_anything_starts(monkeypatch, tmp_path):
    """A registered student whose forward mixes the channels of its conv (a flip) cannot train fused: the
    spec refuses `search.fuse_seeds` in one sentence naming the student, before Ray or MLflow start, and
    the plan and the confirmation ask the same rule (`fused_problem`)."""
    import torch
    from torch import nn

    from explorer.errors import KdxError
    from explorer.models import KdxModel, register_family, registry
    from explorer.tracking import KIND_CONFIRM

    monkeypatch.setattr(registry, "_FAMILIES", list(registry._FAMILIES))  # the real registry stays as is

    class Flipper(KdxModel):
        def __init__(self, width, num_classes, length):
            super().__init__()
            self.conv, self.fc = nn.Conv1d(1, width, 3), nn.Linear(width * (length - 2), num_classes)

        def _forward(self, x):
            return self.fc(torch.flatten(self.conv(x.unsqueeze(1) if x.dim() == 2 else x).flip(1), 1))

    @register_family(rf"flipper{registry.NUM}", input_family="any", allowed="flipper<width>", examples=["flipper4"])
    def _flipper(m):
        return lambda num_classes, shape: Flipper(int(m.group(1)), num_classes, shape[-1])

    flipper = TINY | {"student": TINY["student"] | {"arch": "flipper4"}}
    with pytest.raises(KdxError, match=r"^search\.fuse_seeds: got true, but student 'flipper4' with method 'kd' "
                                       r"cannot train fused \(members: architecture 'flipper4' mixes channels"):
        parse_spec(flipper | {"search": TINY["search"] | {"fuse_seeds": True}})
    plan = make_plan(parse_spec(flipper), str(tmp_path / "store"))  # unfused, the spec is fine
    cell = {"method": "kd", "teacher": TINY["teachers"]["archs"][0], "teacher_stop_epoch": TINY["student"]["epochs"]}
    assert "mixes channels" in plan.fuse_problem(cell, KIND_CONFIRM)
    parse_spec(TINY | {"search": TINY["search"] | {"fuse_seeds": True}})  # the tiny spec's cnn1d_w4 fuses
