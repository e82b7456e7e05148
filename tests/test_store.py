"""Tests for explorer.teachers.store: keys, build-once, extension by stop epochs, checksums, safe loading, locking.

Everything here is real: real training (tiny MLPs on the bundled 8x8 digits, a few epochs), real
files, real processes. No Ray (that is tests/test_zoo.py).
"""

import collections
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from explorer.config import TrainConfig
from explorer.data.condition import DataCondition, DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.storage import TeacherStoreWarning
from explorer.teachers.store import TeacherRecipe, TeacherStore, default_store_root
from explorer.training.build import ensure_teacher
from explorer.training.loop import Trainer
from kdx import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def recipe(arch="mlp_32x1", epochs=3, seed=0, lr=0.05, dataset="digits", data_dir=None, split_seed=0,
           condition=None, **train):
    data = DataSpec(dataset, data_dir=data_dir, split_seed=split_seed, condition=condition or DataCondition())
    return TeacherRecipe(data, TrainConfig(arch, epochs=epochs, lr=lr, seed=seed, batch_size=64,
                                           schedule=train.pop("schedule", "cosine"), **train))


def counter():
    calls = []
    return calls, lambda epoch, metrics: calls.append(epoch)


def sha(path) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def independent_weights(r: TeacherRecipe, epochs: list[int]) -> dict[int, dict]:
    """Model weights after each epoch in `epochs` of a plain Trainer run (no store involved)."""
    out = {}

    def keep(epoch, metrics, trainer):
        if epoch in epochs:
            out[epoch] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    Trainer(r.train, load_splits(r.data), "cpu").run(keep)
    return out


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------ keys


def test_key_is_content_address():
    base = recipe()
    key = base.key()
    # The documented formula, recomputed here: the first 16 hex digits of the SHA-256 of the canonical
    # JSON (sorted keys, no spaces). Keys already in stores depend on it staying exactly this.
    canonical_text = json.dumps(base.canonical(), sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert key == hashlib.sha256(canonical_text.encode()).hexdigest()[:16]
    # Pinned: any change to the canonical form (a field added, a normalisation changed) changes every
    # key, so teachers already built are no longer found. Make such a change on purpose, then update.
    assert key == "e7ea40fd74bc0f16"
    assert key != recipe(weight_decay=1e-4).key() and key != recipe(momentum=0.5).key()
    assert recipe().key() == key
    # where the data lives is not what it is
    assert recipe(data_dir="/somewhere/else").key() == key
    # numbers are normalised
    assert recipe(lr=0.10).key() == recipe(lr=0.1).key()
    assert recipe(lr=1).key() == recipe(lr=1.0).key()
    assert recipe(lr=0.1 + 0.2).key() == recipe(lr=0.3).key()
    # fields the cosine schedule never reads do not split keys
    assert recipe(milestones=(2,), lr_gamma=0.5).key() == key
    changed = [
        recipe(seed=1), recipe(lr=0.051), recipe(epochs=4), recipe(split_seed=1),
        recipe(condition=DataCondition(label_noise=0.2)),
        recipe(condition=DataCondition(omit_classes=(3,))),
        recipe(arch="mlp_64x1"), recipe(dataset="mnist1d", arch="cnn1d_w4"),
        recipe(schedule="multistep", milestones=(2,)),
        TeacherRecipe(base.data, base.train, parent_key="0123456789abcdef"),
    ]
    keys = [r.key() for r in changed]
    assert key not in keys and len(set(keys)) == len(keys)
    canon = base.canonical()
    assert canon["schema"] == 1 and "data_dir" not in json.dumps(canon)
    assert json.loads(json.dumps(canon)) == canon
    assert base.label() == "mlp_32x1 e3 s0"


def test_early_stopped_teacher_is_its_own_key():
    es = recipe(epochs=35, schedule="early_stop")
    ms = recipe(epochs=35, schedule="multistep", milestones=(10, 20, 30))
    assert es.key() != ms.key()
    assert es.key() != recipe(epochs=50, schedule="early_stop").key()
    assert "es" in es.label().split()


def test_bad_recipes_and_stop_epochs(tmp_path):
    store = TeacherStore(str(tmp_path))
    for bad in (0, 4, -1):
        with pytest.raises(KdxError, match=rf"stop_epochs: got {bad}; allowed: whole numbers from 1 to 3"):
            ensure_teacher(store, recipe(), [bad])
    with pytest.raises(KdxError, match="method: got 'kd'; allowed for teachers: ce"):
        ensure_teacher(store, recipe(method="kd"), [])
    with pytest.raises(KdxError, match="input_shape"):
        ensure_teacher(store, recipe(arch="cnn1d_w4"), [])  # 1-D CNN on 8x8 images: refused before any compute
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ build once, reuse


def test_same_recipe_is_built_once(tmp_path):
    store = TeacherStore(str(tmp_path))
    r = recipe()
    calls, on_epoch = counter()
    rec, built = ensure_teacher(store, r, [1], on_epoch=on_epoch)
    assert built and calls == [1, 2, 3]
    assert rec.key == r.key() and rec.stop_epochs == [1, 3] and rec.arch == "mlp_32x1"
    assert rec.params > 0 and rec.num_classes == 10 and rec.input_shape == (1, 8, 8)
    assert [h["epoch"] for h in rec.history] == [1, 2, 3]
    assert sorted(os.listdir(tmp_path / rec.key)) == ["ckpt_e1.pt", "ckpt_e3.pt", "manifest.json", "recipe.json"]
    for e, info in rec.checkpoints.items():
        assert sha(tmp_path / rec.key / info["file"]) == info["sha256"]
        assert info["bytes"] == os.path.getsize(tmp_path / rec.key / info["file"])
    assert rec.size_bytes == sum(c["bytes"] for c in rec.checkpoints.values())

    # A second store object on the same root (another process would see the same): nothing trained.
    again, calls2 = TeacherStore(str(tmp_path)), []
    t0 = time.perf_counter()
    rec2, built2 = ensure_teacher(again, recipe(data_dir="/elsewhere"), [1], on_epoch=lambda e, m: calls2.append(e))
    assert time.perf_counter() - t0 < 2.0
    assert not built2 and calls2 == []
    assert {e: c["sha256"] for e, c in rec2.checkpoints.items()} == {e: c["sha256"] for e, c in rec.checkpoints.items()}
    assert again.get(rec.key).checkpoints == rec.checkpoints
    assert [t.key for t in again.list()] == [rec.key]
    assert again.verify() == []
    assert again.get("0" * 16) is None

    model, info = again.load_model(rec.key)  # final epoch by default
    assert info["epoch"] == 3 and not model.training
    assert info["val_acc"] == rec.checkpoints[3]["val_acc"]


# ------------------------------------------------------------------ stop epochs and extension


def test_stop_epoch_checkpoints_equal_an_independent_run_and_extension_reuses(tmp_path):
    store = TeacherStore(str(tmp_path))
    r = recipe(epochs=4)
    rec, built = ensure_teacher(store, r, [2])
    assert built and rec.stop_epochs == [2, 4]
    folder = tmp_path / rec.key
    before = {e: (os.stat(folder / f"ckpt_e{e}.pt").st_mtime_ns, sha(folder / f"ckpt_e{e}.pt")) for e in (2, 4)}

    calls, on_epoch = counter()
    rec2, built2 = ensure_teacher(store, r, [1, 3], on_epoch=on_epoch)
    assert built2 and rec2.stop_epochs == [1, 2, 3, 4]
    # epoch 1 from scratch; epoch 3 resumed from the kept epoch-2 state: two epochs trained in all
    assert calls == [1, 3]
    assert rec2.builds[-1]["resumed_from"] == [0, 2] and rec2.builds[-1]["epochs_trained"] == 2
    after = {e: (os.stat(folder / f"ckpt_e{e}.pt").st_mtime_ns, sha(folder / f"ckpt_e{e}.pt")) for e in (2, 4)}
    assert after == before  # kept checkpoints were not rewritten
    assert {e: rec2.checkpoints[e]["sha256"] for e in (2, 4)} == {e: rec.checkpoints[e]["sha256"] for e in (2, 4)}
    assert rec2.created == rec.created

    reference = independent_weights(r, [1, 2, 3, 4])
    for e in (1, 2, 3, 4):
        model, info = store.load_model(rec.key, e)
        assert info["epoch"] == e
        assert_same_weights(model.state_dict(), reference[e])
    # The resumed epoch reports the same metrics the uninterrupted run had at that epoch.
    assert [h["val_acc"] for h in rec2.history] == [h["val_acc"] for h in rec.history]
    assert store.verify() == []


# ------------------------------------------------------------------ broken files


class NotWeights:
    """An arbitrary object: torch.save pickles it as a class instance."""

    def __init__(self):
        self.payload = [1, 2, 3]


class SneakyDict(collections.OrderedDict):
    pass


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this would run a shell command
        return (os.system, (f"echo pwned > {self.marker}",))


def _replace_checkpoint(store_dir, key, epoch, obj):
    """Overwrite a checkpoint with torch.save(obj) AND make the manifest's checksum match it."""
    path = store_dir / key / f"ckpt_e{epoch}.pt"
    torch.save(obj, path)
    manifest_path = store_dir / key / "manifest.json"
    m = json.loads(manifest_path.read_text())
    m["checkpoints"][str(epoch)]["sha256"] = sha(path)
    m["checkpoints"][str(epoch)]["bytes"] = os.path.getsize(path)
    manifest_path.write_text(json.dumps(m))


def test_truncated_checkpoint_is_reported_and_rebuilt(tmp_path):
    store = TeacherStore(str(tmp_path))
    r = recipe()
    rec, _ = ensure_teacher(store, r, [1])
    path = tmp_path / rec.key / "ckpt_e3.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])

    problems = store.verify()
    assert len(problems) == 1 and "ckpt_e3.pt" in problems[0] and "checksum mismatch" in problems[0]
    with pytest.raises(KdxError, match=r"teacher [0-9a-f]{16} epoch 3: .*ckpt_e3.pt: checksum mismatch.*"
                                       r"rebuild with `kdx teachers build --dataset digits --arch mlp_32x1"):
        store.load_model(rec.key, 3)
    store.load_model(rec.key, 1)  # the good one still loads

    leftover = tmp_path / rec.key / "ckpt_e3.pt.tmp-999-deadbeef"  # what a writer killed mid-write leaves
    leftover.write_bytes(b"partial")
    assert store.verify() == problems  # never mistaken for a checkpoint
    calls, on_epoch = counter()
    with pytest.warns(TeacherStoreWarning, match="ckpt_e3.pt: checksum mismatch"):
        rec2, built = ensure_teacher(store, r, [1], on_epoch=on_epoch)
    assert built and calls == [2, 3]  # resumed from the intact epoch-1 checkpoint
    assert not leftover.exists()  # cleaned up under the lock
    assert store.verify() == []
    model, _ = store.load_model(rec.key, 3)
    assert_same_weights(model.state_dict(), independent_weights(r, [3])[3])

    # A missing file and an unreadable manifest are reported too.
    (tmp_path / rec.key / "ckpt_e1.pt").unlink()
    assert [p for p in store.verify() if "ckpt_e1.pt: missing" in p]
    (tmp_path / rec.key / "manifest.json").write_text("{not json")
    problems = store.verify()
    assert len(problems) == 1 and "manifest.json: unreadable manifest" in problems[0]
    with pytest.warns(TeacherStoreWarning, match="manifest.json is unreadable"):
        assert store.get(rec.key) is None
    with pytest.warns(TeacherStoreWarning):
        rec3, built3 = ensure_teacher(store, r, [1])
    assert built3 and rec3.stop_epochs == [1, 3] and store.verify() == []


@pytest.mark.parametrize("make", [lambda m: NotWeights(), lambda m: SneakyDict(model={}),
                                  lambda m: {"model": {}, "hook": print}, lambda m: RunsCode(m)],
                         ids=["instance", "dict-subclass", "function", "reduce-runs-code"])
def test_pickled_objects_are_refused(tmp_path, make):
    store_dir = tmp_path / "store"
    store = TeacherStore(str(store_dir))
    rec, _ = ensure_teacher(store, recipe(epochs=1), [])
    marker = tmp_path / "pwned"
    _replace_checkpoint(store_dir, rec.key, 1, make(marker))
    assert store.verify() == []  # the checksum matches: only the safe loader can catch it
    with pytest.raises(KdxError, match=r"epoch 1: .*not a plain weights checkpoint, refused by "
                                       r"torch.load\(weights_only=True\)"):
        store.load_model(rec.key, 1)
    assert not marker.exists()
    # The manifest was forged to match, so the checksum passes; the safe loader is the last line of
    # defence, and every load goes through it: the object is refused every time, never used.
    with pytest.raises(KdxError):
        store.load_model(rec.key)
    assert not marker.exists()


def test_load_model_errors(tmp_path):
    store = TeacherStore(str(tmp_path))
    with pytest.raises(KdxError, match=r"teacher 0123456789abcdef: not in the store"):
        store.load_model("0123456789abcdef")
    rec, _ = ensure_teacher(store, recipe(epochs=2), [])
    with pytest.raises(KdxError, match=r"no checkpoint at epoch 1 \(kept: 2\); add it with `kdx teachers build "
                                       r".*--stop-epochs 1"):
        store.load_model(rec.key, 1)


# ------------------------------------------------------------------ URIs and the default root


def test_pyarrow_uri_store_has_the_same_layout(tmp_path):
    uri = "file://" + str(tmp_path / "bucket")
    store = TeacherStore(uri)
    assert store.root == uri and not store.root.endswith("/")
    rec, built = ensure_teacher(store, recipe(epochs=2), [1])
    assert built and rec.stop_epochs == [1, 2]
    assert store.verify() == [] and [t.key for t in store.list()] == [rec.key]
    model, info = store.load_model(rec.key, 1)
    assert info["sha256"] == sha(tmp_path / "bucket" / rec.key / "ckpt_e1.pt")
    # The same directory read as a plain path: same teacher, nothing left under a temporary name.
    plain = TeacherStore(str(tmp_path / "bucket"))
    assert ensure_teacher(plain, recipe(epochs=2), [1])[1] is False
    assert not [n for n in os.listdir(tmp_path / "bucket" / rec.key) if ".tmp-" in n]
    (tmp_path / "bucket" / rec.key / "ckpt_e2.pt").write_bytes(b"garbage")
    assert len(store.verify()) == 1 and "ckpt_e2.pt: checksum mismatch" in store.verify()[0]


def test_default_store_root_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_store_root() == str(tmp_path / "kdx_runs" / "teachers")
    assert TeacherStore("rel/store").root == str(tmp_path / "rel" / "store")


# ------------------------------------------------------------------ two processes, one build

_ASKER = textwrap.dedent("""
    import json, os, sys, time
    from explorer.data.condition import DataSpec
    from explorer.teachers.store import TeacherRecipe, TeacherStore
    from explorer.training.build import ensure_teacher
    from explorer.config import TrainConfig

    root, marker, ready, go = sys.argv[1:5]
    recipe = TeacherRecipe(DataSpec("digits"), TrainConfig("mlp_32x1", epochs=4, lr=0.05, batch_size=16,
                                                           schedule="cosine"))
    store = TeacherStore(root)
    open(ready, "w").close()
    while not os.path.exists(go):  # start asking at the same moment as the other process
        time.sleep(0.01)

    def on_epoch(epoch, metrics):
        with open(marker, "a") as f:
            f.write(f"{os.getpid()} {epoch}\\n")

    record, built = ensure_teacher(store, recipe, [2], on_epoch=on_epoch)
    print(json.dumps({"built": built, "sha": {str(e): c["sha256"] for e, c in record.checkpoints.items()}}))
""")


def test_two_processes_asking_at_once_build_once(tmp_path):
    root, marker, go = tmp_path / "store", tmp_path / "trained.txt", tmp_path / "go"
    env = dict(os.environ, PYTHONPATH=REPO)
    procs, readies = [], []
    for i in range(2):
        ready = tmp_path / f"ready{i}"
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, "-c", _ASKER, str(root), str(marker), str(ready), str(go)],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    deadline = time.time() + 60
    while not all(r.exists() for r in readies):
        assert time.time() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    lines = marker.read_text().split()
    pids, epochs = set(lines[0::2]), [int(e) for e in lines[1::2]]
    assert len(pids) == 1 and epochs == [1, 2, 3, 4]  # trained once, by one process
    assert sorted(o["built"] for o in outs) == [False, True]
    assert outs[0]["sha"] == outs[1]["sha"] and set(outs[0]["sha"]) == {"2", "4"}
    store = TeacherStore(str(root))
    (rec,) = store.list()
    assert len(rec.builds) == 1 and str(rec.builds[0]["pid"]) in pids


# ------------------------------------------------------------------ kdx train uses the store


def test_kdx_train_takes_the_teacher_from_the_store(tmp_path, capsys):
    store = str(tmp_path / "teachers")
    argv = ["train", "--dataset", "digits", "--student", "mlp_16x1", "--teacher", "mlp_32x1", "--epochs", "1",
            "--teacher-epochs", "3", "--teacher-stop-epoch", "2", "--store", store, "--json"]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out
    assert "[teacher mlp_32x1] epoch   1/3" in first and "epoch 2: built and kept" in first
    result = json.loads(first.strip().splitlines()[-1])
    (rec,) = TeacherStore(store).list()
    assert rec.stop_epochs == [2, 3]
    assert result["teacher_val_acc"] == rec.checkpoints[2]["val_acc"]

    assert cli.main(argv) == 0
    second = capsys.readouterr().out
    assert "[teacher" not in second and "epoch 2: reused" in second
    assert json.loads(second.strip().splitlines()[-1])["teacher_test_acc"] == rec.checkpoints[2]["test_acc"]

    assert cli.main(argv[:-5] + ["--teacher-stop-epoch", "4", "--store", store]) == 2
    assert "--teacher-stop-epoch: got 4; allowed: a whole number from 1 to 3" in capsys.readouterr().err


@pytest.mark.parametrize("train", [
    TrainConfig("mlp_32x1", epochs=6, seed=3),
    TrainConfig("mlp_32x1", epochs=6, schedule="multistep", milestones=(2, 4), lr_gamma=0.1, nesterov=True,
                momentum=0.8, weight_decay=1e-3, batch_size=32),
    TrainConfig("mlp_32x1", epochs=6, adversarial_steps=2, adversarial_eps=0.05, adversarial_step=0.01),
])
def test_the_rebuild_command_builds_the_same_teacher(train):
    """The hint a broken teacher prints (`build_command`) names every keyed Recipe field, the adversarial
    ones included: `kdx teachers build` parses it into a recipe with the same key."""
    import shlex

    from explorer.cli.commands import build_parser, data_spec_from_args, recipe_from_args
    from explorer.teachers.recipe import build_command

    cli.register("teachers")
    data = DataSpec("digits", val_fraction=0.2, split_seed=4, condition=DataCondition(label_noise=0.1, omit_classes=(2,)))
    recipe = TeacherRecipe(data, train)
    command = build_command(recipe.canonical(), [3])
    args = build_parser("teachers").parse_args(shlex.split(command)[1:])
    assert args.stop_epochs == [3] and args.arch == ["mlp_32x1"] and args.seeds == [train.seed]
    rebuilt = TeacherRecipe(data_spec_from_args(args), recipe_from_args(args, "", args.arch[0], args.seeds[0]))
    assert rebuilt.canonical() == recipe.canonical()
    assert ("--adversarial-steps" in command) == bool(train.adversarial_steps)
