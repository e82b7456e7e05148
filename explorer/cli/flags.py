"""The command-line flags that derive from the one definition of each concept (the recipe's fields,
the spec's `dataset:` fields, the method registry's hyperparameters), as plain rows, so that a
command's parser is built without importing torch: a flag error comes back before the heavy imports.

The rows are computed from those definitions (`compute_rows`, which imports them) and kept in
`explorer/__pycache__/kdx_flags.json`, keyed by a hash of every source file of this package: any
edit here recomputes them, so the file is a copy checked by key, never a second list. Where the file
cannot be written, the rows are computed each time (correct, only slower).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]  # explorer/: every source file of the core keys the cache
CACHE = PACKAGE / "__pycache__" / "kdx_flags.json"
_rows: dict | None = None  # this process's copy


def int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}; allowed: comma-separated whole numbers") from None


# argparse type of each row's "type"
TYPES = {"int_list": int_list, "bool": bool, "int": int, "float": float, "str": str}


def _type_name(annotation, default) -> str:
    """The flag type of a pydantic field: int, float, str, bool (a switch) or a list of ints."""
    text = str(annotation)
    if "tuple[int" in text or "list[int" in text:
        return "int_list"
    for t in (bool, int, float):
        if annotation in (t, t | None) or isinstance(default, t):
            return t.__name__
    return "str"


def _field_rows(model) -> list[dict]:
    """One row per field of the pydantic `model`: name, flag type, default, help."""
    return [{"name": name, "type": _type_name(f.annotation, f.default), "help": f.description,
             "default": list(f.default) if isinstance(f.default, tuple) else f.default}
            for name, f in model.model_fields.items()]


def _hparam_rows() -> list[dict]:
    """One row per method hyperparameter of the registry, with every method's default."""
    from explorer.methods import hparam_declarations, hparam_names

    rows = []
    for name in hparam_names():
        decls = hparam_declarations(name)
        rows.append({"name": name, "type": "int" if decls[0][1].integer else "float", "help": decls[0][1].help,
                     "defaults": ", ".join(f"{m.name} {h.default}" for m, h in decls)})
    return rows


def compute_rows() -> dict:
    """The rows, from the definitions themselves (imports torch)."""
    from explorer.config import Recipe
    from explorer.data.section import DatasetSection

    return {"recipe": _field_rows(Recipe), "dataset": _field_rows(DatasetSection), "hparams": _hparam_rows()}


def source_key() -> str:
    """A hash of every source file of this package (what the rows are derived from)."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def flag_rows() -> dict:
    """{"recipe": [...], "dataset": [...], "hparams": [...]}: from the cache when its key matches the
    sources, else computed (and cached)."""
    global _rows
    if _rows is None:
        key = source_key()
        try:
            cached = json.loads(CACHE.read_text())
            if cached.get("key") == key:
                _rows = cached["rows"]
        except (OSError, ValueError, AttributeError, KeyError):
            pass
        if _rows is None:
            _rows = json.loads(json.dumps(compute_rows()))  # the same JSON values as a cache hit gives
            _write(CACHE, json.dumps({"key": key, "rows": _rows}))
    return _rows


def _write(path: Path, text: str) -> None:
    """Atomically (concurrent commands read it); silently nothing where the directory is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".kdx_flags.")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError:
        pass


def add_field_arguments(group, rows: list[dict], prefix: str = "", skip: tuple[str, ...] = (),
                        overrides: dict | None = None) -> None:
    """One flag per row (`--<prefix><field>`), its default and help from the row."""
    for row in rows:
        if row["name"] in skip:
            continue
        default = (overrides or {}).get(row["name"], row["default"])
        flag = f"--{prefix}{row['name'].replace('_', '-')}"
        text = (row["help"] or row["name"]).replace("%", "%%")  # argparse formats help with %
        if row["type"] == "bool":
            group.add_argument(flag, action="store_true", help=text)
        else:
            group.add_argument(flag, type=TYPES[row["type"]], default=default, help=f"{text} (default {default})")
