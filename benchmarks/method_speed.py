"""Each distillation method's training-epoch time relative to a CE epoch, measured in the same run.

Same data, same student and teacher, same batch size, one `Trainer` per method; the trainers take
their epochs in turns (round-robin), so load from other processes falls on every method alike, and
the fastest epoch is reported (`epoch_seconds`: the training pass only, evaluation excluded; the minimum,
as timeit does, because a shared host only ever adds time) after one warm-up epoch. Feature methods run the teacher on every batch with forward hooks on both models; `kd`
on unaugmented data (mnist1d) reads the teacher's logits from a once-per-run cache instead, so it costs
about what CE costs there. `bss` runs its boundary attack (10 teacher forward and backward passes on up to
32 samples per batch; the teacher is trained for 2 epochs first, since only samples it gets right are
attacked) and `uda` runs student and teacher again on a RandAugment view (n/a on 1-D data). Two-stage methods are timed per stage ("init": the stage-1 loss alone;
"main": Hinton KD, with the features still tapped). A method that does not fit a family is shown as n/a.

    .venv/bin/python benchmarks/method_speed.py [--quick] [--device cpu] [--threads 1] [--json]

--quick: 2 measured epochs instead of 8, and 1000 MNIST-1D training samples instead of all of them.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

import torch

from explorer.data.condition import DataSpec
from explorer.data.splits import load_splits
from explorer.errors import KdxError
from explorer.config import TrainConfig
from explorer.training.loop import Trainer
from explorer.training.members import Diverged

SETTINGS = {
    # name: dataset, teacher, student, batch size
    "mnist1d cnn1d_w64 -> cnn1d_w4": ("mnist1d", "cnn1d_w64", "cnn1d_w4", 128),
    "fake 3x16x16 (crop+flip) resnet20 -> resnet8": ("fake", "resnet20", "resnet8", 128),
}
METHODS = ["ce", "kd", "bss", "uda", "at", "sp", "rkd_d", "rkd_a", "rkd_da", "sfd", "oh", "fitnet", "fsp", "ab"]
TWO_STAGE = {"fitnet", "fsp", "ab"}
# bss attacks only in the first 3/4 of training (its weight is 0 afterwards): its trainer is told of a long
# run so that every measured epoch attacks, which is the cost a real bss run pays for most of its epochs.
LONG_RUN = {"bss": 1000}
TEACHER_EPOCHS = 2  # a briefly trained teacher: bss attacks only samples the teacher gets right


def trainers(splits, t_arch, s_arch, batch, rounds, device) -> dict[str, Trainer | str]:
    torch.manual_seed(0)
    teacher = Trainer(TrainConfig(t_arch, epochs=TEACHER_EPOCHS, batch_size=batch, seed=0), splits, device)
    teacher.run()
    teacher = teacher.model
    out: dict[str, Trainer | str] = {}
    for name in METHODS:
        stages = [("init", rounds), ("main", 0)] if name in TWO_STAGE else [("", None)]
        for stage, init in stages:
            label = f"{name} ({stage})" if stage else name
            params = {} if init is None else {"init_epochs": init}
            cfg = TrainConfig(s_arch, epochs=LONG_RUN.get(name, rounds), batch_size=batch, seed=0, method=name,
                              method_params=params)
            try:
                out[label] = Trainer(cfg, splits, device, teacher=None if name == "ce" else teacher)
            except KdxError as e:
                out[label] = str(e)
    return out


def bench(name, dataset, t_arch, s_arch, batch, epochs, device, quick) -> dict:
    splits = load_splits(DataSpec(dataset))
    if quick and len(splits.train_y) > 1000:
        splits = replace(splits, train_x=splits.train_x[:1000], train_y=splits.train_y[:1000],
                         train_clean_y=splits.train_clean_y[:1000])
    rounds = epochs + 1  # one warm-up epoch
    runs = trainers(splits, t_arch, s_arch, batch, rounds, device)
    times: dict[str, list[float]] = {k: [] for k, v in runs.items() if not isinstance(v, str)}
    for r in range(rounds):
        for label, tr in runs.items():
            if isinstance(tr, str):
                continue
            try:
                m = tr.train_epoch()
            except Diverged as e:  # timed no further; shown as n/a with the reason
                runs[label] = f"diverged at the default hyperparameters ({e})"
                times.pop(label)
                continue
            if r > 0:
                times[label].append(m["epoch_seconds"])
    ce = min(times["ce"])
    rows = []
    for label, tr in runs.items():
        if isinstance(tr, str):
            rows.append({"method": label, "seconds": None, "relative": None, "note": tr})
        else:
            t = min(times[label])
            rows.append({"method": label, "seconds": t, "relative": t / ce, "note": ""})
    return {"setting": name, "train_samples": len(splits.train_y), "epochs_measured": epochs, "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2 measured epochs, 1000 MNIST-1D samples")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared host)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    epochs = 2 if args.quick else 8
    results = [bench(n, *s, epochs, torch.device(args.device), args.quick) for n, s in SETTINGS.items()]
    if args.json:
        print(json.dumps(results, indent=1))
        return
    names = list(SETTINGS)
    print(f"| method | {' | '.join(names)} |")
    print("|---|" + "---|" * len(names))
    for i, row in enumerate(results[0]["rows"]):
        cells = []
        for res in results:
            r = res["rows"][i]
            cells.append("n/a" if r["seconds"] is None else f"{r['relative']:.2f}x ({r['seconds']:.2f} s)")
        print(f"| {row['method']} | {' | '.join(cells)} |")
    for res in results:
        print(f"{res['setting']}: {res['train_samples']} training samples, fastest of {res['epochs_measured']} epochs")
        for r in res["rows"]:
            if r["note"]:
                print(f"  n/a {r['method']}: {r['note']}")


if __name__ == "__main__":
    main()
