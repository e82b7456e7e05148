"""Fixed augmented views and the teacher's logits on them, computed once per (sample, view) and kept
in the teacher store (explorer/teachers/views.py): determinism, agreement with a live teacher, reuse across
trials, corruption, concurrent builders, exact resume, and the `views` setting's one definition."""

import json
import shutil
import threading
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from explorer.config import TrainConfig
from explorer.data.augment import DISTINCT_VIEWS, augment_batch
from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.storage import TeacherStoreWarning
from explorer.teachers.recipe import TeacherRecipe
from explorer.teachers.store import TeacherStore
from explorer.teachers.views import TeacherViews, stored_view_logits, view_images, view_params
from explorer.training.build import ensure_teacher
from explorer.training.loop import Trainer, load_state, save_state

ARCH = "mlp_400x1"  # fast on 3x16x16 images
V = 4


@pytest.fixture(scope="module")
def fake():
    """The registered 3x16x16 crop_flip dataset, cut to 300 training samples (speed)."""
    s = load_splits(DataSpec("fake"))
    return replace(s, train_x=s.train_x[:300].contiguous(), train_y=s.train_y[:300], train_clean_y=s.train_clean_y[:300])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A teacher store holding one small teacher (its key); each test copies it."""
    root = tmp_path_factory.mktemp("views_store")
    rec, _ = ensure_teacher(TeacherStore(str(root)), TeacherRecipe(DataSpec("fake"), TrainConfig(ARCH, epochs=1, seed=0)))
    return root, rec.key


@pytest.fixture
def store(built, tmp_path):
    root, key = built
    shutil.copytree(root / key, tmp_path / key)
    return TeacherStore(str(tmp_path)), key


def _counting(model):
    """Count the samples `model` is run on (a forward hook)."""
    seen = []
    model.register_forward_hook(lambda m, inp, out: seen.append(len(inp[0])))
    return seen


def _kd(views=V, epochs=1, seed=0, **kw):
    return TrainConfig(ARCH, epochs=epochs, seed=seed, method="kd", views=views, batch_size=64, **kw)


# ---------------------------------------------------------------- the views
def _reference_crop(x, dy, dx, flip, p=4):
    """Crop of the reflect-padded image at (dy, dx), then the flip: the textbook way."""
    padded = F.pad(x[None], (p, p, p, p), mode="reflect")[0]
    out = padded[:, dy:dy + x.shape[1], dx:dx + x.shape[2]]
    return out.flip(-1) if flip else out


def test_views_are_a_function_of_sample_and_view(fake):
    idx = torch.tensor([0, 5, 5, 299, 7])
    v = torch.tensor([0, 3, 3, 1, 2])
    a = view_images(fake.train_x, idx, v)
    assert torch.equal(a, view_images(fake.train_x, idx, v))       # the same on every call
    assert torch.equal(a[1], a[2])                                 # and for every occurrence
    b = view_images(fake.train_x, idx.flip(0), v.flip(0))          # whatever the batch around it
    assert torch.equal(a, b.flip(0))
    dy, dx, flip = view_params(idx, v)
    for k in range(len(idx)):  # the shared gather is the textbook reflect-pad, crop, flip
        ref = _reference_crop(fake.train_x[idx[k]], int(dy[k]), int(dx[k]), bool(flip[k]))
        assert torch.equal(a[k], ref)
    if torch.cuda.is_available():  # the same images on another device
        assert torch.equal(view_images(fake.train_x.cuda(), idx.cuda(), v.cuda()).cpu(), a)


def test_a_samples_views_are_distinct_and_every_crop_is_one():
    idx = torch.arange(3).repeat_interleave(DISTINCT_VIEWS)
    v = torch.arange(DISTINCT_VIEWS).repeat(3)
    dy, dx, flip = view_params(idx, v)
    combos = (dy * 18 + dx * 2 + flip.long()).view(3, DISTINCT_VIEWS)
    assert all(sorted(row.tolist()) == list(range(DISTINCT_VIEWS)) for row in combos)
    assert len({tuple(row[:4].tolist()) for row in combos}) == 3  # samples do not share their views
    with pytest.raises(KdxError, match="view index"):
        view_params(torch.tensor([0]), torch.tensor([DISTINCT_VIEWS]))


def test_live_augmentation_is_unchanged_by_the_shared_gather(fake):
    g = torch.Generator().manual_seed(3)
    out = augment_batch(fake.train_x[:8], g)
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 9, (8,), generator=g), torch.randint(0, 9, (8,), generator=g)
    flip = torch.randint(0, 2, (8,), generator=g).bool()
    for k in range(8):
        assert torch.equal(out[k], _reference_crop(fake.train_x[k], int(dy[k]), int(dx[k]), bool(flip[k])))


# ---------------------------------------------------------------- the table in the store
def test_stored_logits_equal_a_live_teacher_within_fp16(store, fake):
    st, key = store
    model, _ = st.load_model(key)
    table = stored_view_logits(st, key, 1, model, fake.train_x, V, True, 10)
    assert table.dtype == torch.float16 and table.shape == (300, V, 10)
    idx = torch.arange(300).repeat_interleave(V)
    v = torch.arange(V).repeat(300)
    with torch.inference_mode():
        live = model(view_images(fake.train_x, idx, v)).float().view(300, V, 10)
    torch.testing.assert_close(table.float(), live, rtol=2 ** -10, atol=1e-4)
    record = json.loads(next(Path(st.root, key).glob("views_*.json")).read_text())
    assert record["shape"] == [300, V, 10] and record["dtype"] == "float16" and record["views"] == V


def test_a_second_trial_does_not_run_the_teacher(store, fake):
    st, key = store
    forwards = []
    for trial in range(2):
        teacher, _ = st.teacher(key)  # told its store entry: its table is read (or written) there
        seen = _counting(teacher.model)
        tr = Trainer(_kd(seed=trial), fake, "cpu", teacher=teacher)
        at_start = sum(seen)
        tr.run()
        forwards.append((at_start, sum(seen) - at_start))
    n_val = len(fake.val_y)
    assert forwards[0] == (n_val + 300 * V, 0)  # the first trial builds the table (and rates the teacher on val)
    assert forwards[1] == (n_val, 0)            # the second only rates it; no teacher forward in either loop


def test_trainer_gives_the_teachers_logits_of_the_views_it_drew(store, fake):
    st, key = store
    teacher, _ = st.teacher(key)
    model = teacher.model
    tr = Trainer(_kd(), fake, "cpu", teacher=teacher)
    assert isinstance(tr.signal.views, TeacherViews)
    idx = torch.randperm(300)[:64]
    xb = tr.batches.images(fake.train_x[idx], idx)
    logits, feats = tr.signal.outputs(xb, idx)
    with torch.inference_mode():
        live = model(xb).float()
    assert feats is None
    torch.testing.assert_close(logits, live, rtol=2 ** -10, atol=1e-4)


def test_a_corrupted_table_is_detected_and_rebuilt(store, fake):
    st, key = store
    model, _ = st.load_model(key)
    first = stored_view_logits(st, key, 1, model, fake.train_x, V, True, 10)
    pt = next(Path(st.root, key).glob("views_*.pt"))
    data = bytearray(pt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pt.write_bytes(bytes(data))
    seen = _counting(model)
    with pytest.warns(TeacherStoreWarning, match="checksum mismatch.*rebuilt"):
        again = stored_view_logits(st, key, 1, model, fake.train_x, V, True, 10)
    assert sum(seen) == 300 * V and torch.equal(again, first)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # now sound: read without a warning and without the teacher
        assert torch.equal(stored_view_logits(st, key, 1, model, fake.train_x, V, True, 10), first)
    assert sum(seen) == 300 * V
    pt.with_suffix(".json").write_text("{not json")
    with pytest.warns(TeacherStoreWarning, match="unreadable record"):
        assert torch.equal(stored_view_logits(st, key, 1, model, fake.train_x, V, True, 10), first)


def test_the_table_depends_on_data_views_and_epoch(store, fake):
    st, key = store
    model, _ = st.load_model(key)
    stored_view_logits(st, key, 1, model, fake.train_x, V, True, 10)
    stored_view_logits(st, key, 1, model, fake.train_x, 2, True, 10)              # another V
    stored_view_logits(st, key, 1, model, fake.train_x[:200], V, True, 10)       # other data
    stored_view_logits(st, key, 1, model, fake.train_x, V, False, 10)            # unaugmented: another table
    assert len(list(Path(st.root, key).glob("views_*.pt"))) == 4


def test_concurrent_builders_build_once(store, fake):
    st, key = store
    model, _ = st.load_model(key)
    seen = _counting(model)
    out, barrier = [], threading.Barrier(2)

    def build():
        barrier.wait()
        out.append(stored_view_logits(TeacherStore(st.root), key, 1, model, fake.train_x, V, True, 10))

    threads = [threading.Thread(target=build) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(out) == 2 and torch.equal(out[0], out[1]) and sum(seen) == 300 * V


def test_unaugmented_data_keeps_float32_logits_of_the_plain_set(tmp_path):
    splits = load_splits(DataSpec("digits"))
    st = TeacherStore(str(tmp_path))
    rec, _ = ensure_teacher(st, TeacherRecipe(DataSpec("digits"), TrainConfig(ARCH, epochs=1)))
    teacher, _ = st.teacher(rec.key)
    model = teacher.model
    seen = _counting(model)
    a = Trainer(_kd(views=16), splits, "cpu", teacher=teacher)
    n = len(splits.train_y)
    assert a.signal.views.tables[0].dtype == torch.float32 and a.signal.views.views == 1
    assert sum(seen) == len(splits.val_y) + n  # rated on val, then run once on the training set
    with torch.inference_mode():
        plain = model(splits.train_x).float()
    # the plain logits up to float32 rounding (the table is computed in batches, and the matmul kernels of
    # some CPUs round a 256-row batch differently from the whole set); fp16 would be off by ~1e-3
    assert torch.allclose(a.signal.views.tables[0][:, 0], plain, rtol=1e-6, atol=1e-5)
    teacher2, _ = st.teacher(rec.key)
    seen2 = _counting(teacher2.model)
    Trainer(_kd(views=16), splits, "cpu", teacher=teacher2)
    assert sum(seen2) == len(splits.val_y)  # the second trainer reads the table


# ---------------------------------------------------------------- the trainer
def test_views_zero_is_live_augmentation(fake):
    teacher = Trainer(TrainConfig(ARCH, epochs=1), fake, "cpu")
    seen = _counting(teacher.model)
    tr = Trainer(_kd(views=0), fake, "cpu", teacher=teacher.model)
    assert tr.signal.views is None
    before = sum(seen)
    tr.run()
    assert sum(seen) - before == 300  # the teacher ran on every batch


def test_resume_with_views_is_exact(fake, tmp_path):
    """k epochs, save, resume in a new trainer: the same numbers and weights as one uninterrupted run."""
    t = Trainer(TrainConfig(ARCH, epochs=1), fake, "cpu")
    t.run()
    cfg = _kd(epochs=3)
    full = Trainer(cfg, fake, "cpu", teacher=t.model)
    full.run()
    part = Trainer(cfg, fake, "cpu", teacher=t.model)
    part.train_epoch()
    save_state(part.state_dict(), tmp_path / "state.pt")
    resumed = Trainer(cfg, fake, "cpu", teacher=t.model)
    resumed.load_state_dict(load_state(tmp_path / "state.pt"))
    resumed.run()
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    for k, v in full.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_feature_methods_keep_the_live_path(fake):
    t = Trainer(TrainConfig(ARCH, epochs=1), fake, "cpu")
    tr = Trainer(TrainConfig(ARCH, epochs=1, method="sp", views=V), fake, "cpu", teacher=t.model)
    assert tr.signal.views is None


# ---------------------------------------------------------------- the setting, defined once
def test_views_setting_flows_from_the_recipe():
    from explorer.cli.flags import compute_rows
    from explorer.tracking import RECIPE_PARAMS

    assert TrainConfig(ARCH).views == 16 and TrainConfig(ARCH, views="live").views == 0
    assert TrainConfig(ARCH, views=None).views == 0
    with pytest.raises(KdxError, match=r"^views: got 500; allowed: .*1 to 162"):
        TrainConfig(ARCH, views=500)
    assert "student.views" in RECIPE_PARAMS
    assert any(r["name"] == "views" and r["type"] == "int" for r in compute_rows()["recipe"])


def test_views_key_a_teacher_only_where_they_change_its_run():
    plain = [TeacherRecipe(DataSpec("fake"), TrainConfig(ARCH, epochs=2, views=v)).key() for v in (0, 4, 16)]
    assert len(set(plain)) == 1  # a CE teacher trains on live crops whatever `views` says
    parent = plain[0]
    kd = {v: TeacherRecipe(DataSpec("fake"), TrainConfig(ARCH, epochs=2, method="kd", views=v), parent) for v in (0, 4)}
    assert "views" not in kd[0].canonical()["train"] and kd[4].canonical()["train"]["views"] == 4
    assert kd[0].key() != kd[4].key()
    unaugmented = [TeacherRecipe(DataSpec("digits"), TrainConfig(ARCH, epochs=2, method="kd", views=v), parent).key()
                   for v in (0, 4)]
    assert unaugmented[0] == unaugmented[1]
