"""Reading a spec file: the path (a file, not a directory), UTF-8 text and YAML without a key given
twice, each problem one sentence naming SPEC. Light (no torch): the command line checks the path
with it before anything heavy is imported; `explorer.spec.search.load_spec` reads specs with it."""

from __future__ import annotations

from pathlib import Path

import yaml

from explorer.errors import KdxError


def check_spec_path(path: str | Path) -> Path:
    """The spec's path, if it names a file; else the one-sentence refusal."""
    path = Path(path)
    if path.is_dir():
        raise KdxError(f"SPEC: got {str(path)!r}, a directory; allowed: a spec file in it, e.g. "
                       f"{str(path / 'quickstart.yaml')!r}.")
    if not path.is_file():
        raise KdxError(f"SPEC: got {str(path)!r}; no such file (specs live in searches/, e.g. searches/quickstart.yaml).")
    return path


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_spec_file(path: str | Path):
    """(the parsed YAML, the file's text); KdxError naming SPEC for a bad path, encoding or YAML."""
    path = check_spec_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise KdxError(f"SPEC: {str(path)!r} is not UTF-8 text (byte {e.start}); allowed: a UTF-8 YAML file.") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "syntax"
        raise KdxError(f"SPEC: {str(path)!r} is not valid YAML{where} ({problem}); fix it.") from None
    return data, text
