"""Born-again generations against scratch ensembles (seed 004 section 5.4, table 4).

Seed 004 asks whether repeated (sequential) self-distillation beats plain ensembling: for an
architecture `a` it compares the last generation of a born-again sequence, the ensemble of the whole
sequence, and an ensemble of as many models trained from scratch. Here, for `a` and `g` generations
with base seed `s` (the spec's teacher recipe, dataset and `teachers.distill`):

* the sequence is generation 0 = `a` (trained with CE, seed s, the "scratch teacher") and the
  born-again generations 1..g = the teacher entries `a^1` .. `a^g` (generation k has seed s + k and is
  distilled from generation k - 1 with `teachers.distill`; see explorer.teachers.entries.parse_teacher);
* the scratch models are the g + 1 CE-trained models `a:s<s>`, `a:s<s+1>`, ..., `a:s<s+g>` (the first
  one is generation 0 itself, as in seed 004, whose "Scratch Err." is the first generation's);

and the rows of `compare_generations` are

* `scratch`: generation 0 alone (seed 004's "Scratch Err.");
* `last_generation`: generation g alone ("Last Gen. Err.");
* `generations_ensemble`: generations 0..g, g + 1 models ("All Gen. Ensemble Err.");
* `scratch_ensemble`: the g + 1 scratch models ("Scratch Ensemble Err."), as many models as the
  generations ensemble.

An ensemble predicts the argmax of the mean of its members' softmax probabilities (T = 1), like the
loop's TeacherEnsemble. Every model is its recipe's run at its final epoch (a spec's stop epochs and
early-stop schedule, which concern the teachers used by trials, are ignored). Store keys come from
trainables.plan.make_plan on the spec with those teacher entries, so they are exactly the keys a
`kdx search` with such entries builds and uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from explorer.errors import KdxError, bad_value
from explorer.models import is_known_model
from explorer.spec.search import SearchSpec, load_spec
from explorer.teachers.entries import parse_teacher, teacher_chains
from explorer.teachers.store import TeacherRecipe, TeacherStore
from explorer.training.build import ensure_teacher

ROWS = ("scratch", "last_generation", "generations_ensemble", "scratch_ensemble")


def _generation(entry: str, seed: int) -> tuple[str, int] | None:
    """(arch, g) of a plain entry 'a' (g = 0) or a born-again one 'a^g' (read with the one teacher-syntax
    parser); None for chains of other architectures, ensembles and seeded entries."""
    (chain, *others) = parse_teacher(entry, seed)
    arch = chain[0][0]
    if others or chain != [(arch, seed + k) for k in range(len(chain) - 1, -1, -1)]:
        return None
    return arch, len(chain) - 1


def _as_spec(spec: SearchSpec | str | Path) -> SearchSpec:
    return spec if isinstance(spec, SearchSpec) else load_spec(spec)[0]


def _defaults(spec: SearchSpec, arch: str | None, generations: int | None) -> tuple[str, int]:
    """The architecture and generation count: given, or read from the spec's teacher entries
    (the first plain architecture or `a^g` entry; the spec's `teachers.generations`, else the largest
    `^g` written for that architecture)."""
    t = spec.teachers
    if arch is None:
        for entry in t.archs:
            found = _generation(entry, t.seed)
            if found:
                arch = found[0]
                break
        else:
            raise KdxError(f"arch: got none and the spec's teachers.archs {t.archs} has no plain architecture; "
                           "name one with --arch.")
    elif not is_known_model(arch):
        raise bad_value("arch", arch, "allowed: an architecture from `kdx models`")
    if generations is None:
        written = [g for a, g in filter(None, (_generation(e, t.seed) for e in t.archs)) if a == arch]
        generations = t.generations or max(written, default=0)
        if generations < 1:
            raise KdxError(f"generations: got none; the spec names no born-again generations of {arch} "
                           "(teachers.generations or an 'a^g' entry); give --generations.")
    if isinstance(generations, bool) or not isinstance(generations, int) or not 1 <= generations <= 20:
        raise bad_value("generations", generations, "allowed: a whole number from 1 to 20")
    return arch, generations


def generation_entries(arch: str, generations: int, seed: int) -> dict[str, list[str]]:
    """Teacher entries (spec syntax, base seed `seed`) of the sequence and of the scratch models."""
    return {
        "generations": [arch] + [f"{arch}^{k}" for k in range(1, generations + 1)],
        "scratch": [arch] + [f"{arch}:s{seed + k}" for k in range(1, generations + 1)],
    }


@dataclass
class GenerationPlan:
    """Every store recipe of a generation comparison (parents before children) and the epochs to keep."""

    recipes: dict[str, TeacherRecipe] = field(default_factory=dict)
    stops: dict[str, list[int]] = field(default_factory=dict)


def generation_plan(spec: SearchSpec | str | Path, store_root: str, arch: str | None = None,
                    generations: int | None = None, seed: int | None = None) -> tuple[GenerationPlan, dict[str, list[str]]]:
    """(plan, {"generations": [store keys, gen 0..g], "scratch": [store keys, g + 1 seeds]}).

    The entries of `generation_entries` (final epochs only, no early-stop schedule) walked with the
    spec's teacher recipe and `teachers.distill` (explorer.teachers.entries.teacher_chains): the plan's
    `recipes` and `stops` are what `TeacherStore.ensure` needs to build the missing models."""
    spec = _as_spec(spec)
    arch, generations = _defaults(spec, arch, generations)
    seed = spec.teachers.seed if seed is None else int(seed)
    t = spec.teachers
    plan, keys = GenerationPlan(), {}
    for kind, entries in generation_entries(arch, generations, seed).items():
        keys[kind] = []
        for entry in entries:
            (links,) = teacher_chains(entry, spec.data_spec(), t.recipe, seed, t.recipe.epochs, t.distill_method())
            for link in links:
                plan.recipes.setdefault(link.key, link.recipe)
                plan.stops.setdefault(link.key, [link.epoch])
            keys[kind].append(links[-1].key)
    return plan, keys


def build_generations(spec, store_root: str, arch: str | None = None, generations: int | None = None,
                      seed: int | None = None, device=None, on_build=None) -> list[str]:
    """Build (in this process, in chain order) every model the comparison needs that the store lacks;
    returns the keys built now. `on_build(key, label)` is called before each build."""
    plan, _ = generation_plan(spec, store_root, arch, generations, seed)
    store = TeacherStore(store_root)
    built = []
    for key, recipe in plan.recipes.items():
        if store.complete(recipe, plan.stops[key]) is not None:
            continue
        if on_build is not None:
            on_build(key, recipe.label())
        ensure_teacher(store, recipe, plan.stops[key], device=device)
        built.append(key)
    return built


def _accuracy(probs: list[torch.Tensor], y: torch.Tensor) -> float:
    return (torch.stack(probs).mean(0).argmax(1) == y).float().mean().item()


def compare_generations(store_root: str, spec: SearchSpec | str | Path, arch: str | None = None,
                        generations: int | None = None, seed: int | None = None, device="cpu") -> pd.DataFrame:
    """Seed 004 table 4 for one architecture, from the teacher store (see the module docstring for
    the exact definition of each row). `spec` is a SearchSpec or the path of a spec file; `arch`,
    `generations` and `seed` default to the spec's (first plain teacher architecture, its
    `teachers.generations` or largest `a^g` entry, `teachers.seed`).

    Returns one row per comparison (ROWS order) with columns model, arch, generations, n_models,
    members (teacher entries joined by '+'), keys, val_acc, test_acc. Raises KdxError, before any
    evaluation, naming the models missing from the store."""
    from explorer.data.splits import load_splits
    from explorer.training.evaluation import predict_logits

    spec = _as_spec(spec)
    plan, keys = generation_plan(spec, store_root, arch, generations, seed)
    arch, generations = _defaults(spec, arch, generations)
    seed = spec.teachers.seed if seed is None else int(seed)
    entries = generation_entries(arch, generations, seed)
    store = TeacherStore(store_root)
    label = dict(zip(keys["generations"] + keys["scratch"], entries["generations"] + entries["scratch"]))
    missing = [label[k] for k in label if store.get(k) is None]
    if missing:
        raise KdxError(f"teacher store {store.root}: missing {len(missing)} of the {len(label)} models of the "
                       f"{arch} generation comparison ({', '.join(missing)}); build them with "
                       f"`kdx generations SPEC --build` (or list them in teachers.archs and run `kdx search SPEC`; "
                       f"plain ones also with `kdx teachers build`).")
    splits = load_splits(spec.data_spec()).to(device)
    probs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key in label:
        model, _ = store.load_model(key, None, device=device)
        probs[key] = tuple(F.softmax(predict_logits(model, x), dim=1) for x in (splits.val_x, splits.test_x))

    def row(name: str, members: list[str]) -> dict:
        return {
            "model": name, "arch": arch, "generations": generations, "n_models": len(members),
            "members": "+".join(label[k] for k in members), "keys": ",".join(members),
            "val_acc": _accuracy([probs[k][0] for k in members], splits.val_y),
            "test_acc": _accuracy([probs[k][1] for k in members], splits.test_y),
        }

    gens, scratch = keys["generations"], keys["scratch"]
    rows = [row("scratch", gens[:1]), row("last_generation", gens[-1:]),
            row("generations_ensemble", gens), row("scratch_ensemble", scratch)]
    return pd.DataFrame(rows)
