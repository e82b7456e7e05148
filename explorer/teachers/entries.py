"""Teacher entries: the one parser of the teacher syntax and the one walker of teacher chains.

An entry of `teachers.archs` (or `kdx train --teacher`) is an architecture, 'a<b' (a distilled from
b; chains like 'a<b<c'), 'a^g' (born-again generation g of a), 'a:sN' (teacher seed N), or such
members joined by '+' (an ensemble). `parse_teacher` reads it; `teacher_chains` turns it into the
store recipes of every link, root first, each distilled link carrying its parent's key.
"""

from __future__ import annotations

from dataclasses import dataclass

from explorer.config import Recipe
from explorer.data.condition import DataSpec
from explorer.errors import KdxError
from explorer.models import is_known_model
from explorer.teachers.recipe import TeacherRecipe

TEACHER_SYNTAX = ("allowed: an architecture from `kdx models`, 'a<b' (a distilled from b; chains like 'a<b<c'), "
                  "'a^g' (born-again generation g of a), 'a:sN' (teacher seed N), or such members joined by '+' "
                  "(an ensemble)")


def parse_teacher(text: str, seed: int, field: str = "teachers.archs") -> list[list[tuple[str, int]]]:
    """Parse one teacher entry into its members; each member is a chain of (arch, seed) links, the
    teacher that is used first, its own teacher next, down to the CE-trained root.

    'a' -> [[(a, seed)]]; 'a<b' -> [[(a, seed), (b, seed)]]; 'a^2' -> [[(a, seed+2), (a, seed+1),
    (a, seed)]] (generation k has seed + k, so generations start from different weights, as
    born-again networks do); 'a:s3' -> seed 3; 'x+y' -> two members (an ensemble)."""
    if not isinstance(text, str) or not text.strip():
        raise KdxError(f"{field}: got {text!r}; {TEACHER_SYNTAX}.")
    members = []
    for member in text.replace(" ", "").split("+"):
        chain: list[tuple[str, int]] = []
        for link in member.split("<"):
            gens, arch, link_seed = 0, link, seed
            if "^" in arch:
                arch, _, g = arch.partition("^")
                if not g.isdigit() or int(g) == 0:
                    raise KdxError(f"{field}: got {text!r}; the generation after '^' must be a whole number >= 1 ('a^0' is 'a'); {TEACHER_SYNTAX}.")
                gens = int(g)
            if ":" in arch:
                arch, _, sd = arch.partition(":")
                if not (sd.startswith("s") and sd[1:].isdigit()):
                    raise KdxError(f"{field}: got {text!r}; a seed is written ':s<N>', e.g. 'cnn1d_w16:s1'; {TEACHER_SYNTAX}.")
                link_seed = int(sd[1:])
            if not is_known_model(arch):
                raise KdxError(f"{field}: got {text!r}; {arch!r} is not an architecture; {TEACHER_SYNTAX}.")
            chain += [(arch, link_seed + k) for k in range(gens, -1, -1)]
        members.append(chain)
    return members


def teacher_kind(members: list[list[tuple[str, int]]]) -> str:
    """'ensemble' (several members), 'distilled' (a chain) or 'plain'."""
    if len(members) > 1:
        return "ensemble"
    return "distilled" if len(members[0]) > 1 else "plain"


@dataclass(frozen=True)
class Link:
    """One model of a teacher chain: its store recipe and the checkpoint epoch that is used (the stop
    epoch for the head, the final epoch below it)."""

    arch: str
    recipe: TeacherRecipe
    epoch: int
    head: bool

    @property
    def key(self) -> str:
        return self.recipe.key()


def teacher_chains(entry: str, data: DataSpec, recipe: Recipe, seed: int, stop: int,
                   distill: tuple[str, dict], early_stop_schedule: bool = False,
                   field: str = "teachers.archs") -> list[list[Link]]:
    """The members of teacher `entry` used at epoch `stop`, each a chain of `Link`s from the CE-trained
    root to the teacher used (the head). The head follows the stop-epoch recipe (seed 004's
    early-stop schedule when asked); links below it are full recipe runs used at their final epoch,
    distilled with `distill` = (method, hyperparameters)."""
    method, params = distill
    out = []
    for chain in parse_teacher(entry, seed, field=field):
        links, parent = [], None
        for depth, (arch, link_seed) in enumerate(reversed(chain)):
            head = depth == len(chain) - 1
            kw = {"method": method, "method_params": params} if depth > 0 else {}
            if head and early_stop_schedule:
                cfg = recipe.train_config(arch, link_seed, epochs=stop, schedule="early_stop", milestones=(), **kw)
            else:
                cfg = recipe.train_config(arch, link_seed, **kw)
            teacher = TeacherRecipe(data=data, train=cfg, parent_key=parent)
            links.append(Link(arch, teacher, stop if head else cfg.epochs, head))
            parent = teacher.key()
        out.append(links)
    return out


def distillation_problem(method, student: str, entry: str | None, seed: int, field: str = "teachers.archs") -> str | None:
    """Why `method` (a Method) cannot train the student architecture `student` from the teacher entry
    `entry` (None: no teacher), or None: the one method-and-teacher check that the spec and `kdx train`
    use. The method must read the student's and, where it takes one, each member's used architecture
    (`arch_problem`), and take the entry's kind of teacher, of the student's architecture where it must
    (`teacher_problem`)."""
    members = parse_teacher(entry, seed, field) if entry is not None else None
    used = [chain[0][0] for chain in members or []] if method.needs_teacher else []
    for arch in dict.fromkeys([student] + used):
        problem = method.arch_problem(arch)
        if problem:
            return problem
    if not method.needs_teacher and members is None:
        return None
    return method.teacher_problem(None if members is None else teacher_kind(members),
                                  same_arch=members is not None and members[0][0][0] == student,
                                  members=None if members is None else len(members))
