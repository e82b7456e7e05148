"""A corpus of bad specs (tests/bad_specs/), one defect each: every one is refused before anything
runs, in one sentence that names the field at fault, the value and what is allowed."""

import copy
from pathlib import Path

import pytest
import yaml

from explorer.spec.axes import set_path
from explorer.errors import KdxError
from explorer.spec.search import load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "bad_specs"
TINY = yaml.safe_load((ROOT / "tests" / "specs" / "tiny.yaml").read_text())
CORPUS = yaml.safe_load((HERE / "corpus.yaml").read_text())


def changed(changes: dict) -> dict:
    data = copy.deepcopy(TINY)
    for path, value in changes.items():
        if value is None:  # `~` deletes the key
            head, _, last = path.rpartition(".")
            section = data
            for key in filter(None, head.split(".")):
                section = section[key]
            section.pop(last)
        else:
            data = set_path(data, path, value)
    return data


def one_sentence(e: KdxError) -> str:
    msg = str(e)
    assert "\n" not in msg and "Traceback" not in msg and msg.endswith("."), msg
    return msg


def test_the_corpus_is_large_and_each_case_has_one_defect():
    assert len(CORPUS) >= 60
    parse_spec(copy.deepcopy(TINY))  # the base itself is valid


@pytest.mark.parametrize("case", CORPUS, ids=[f"{c['field']}={list(c['set'].values())[0]!r}"[:50] for c in CORPUS])
def test_bad_spec_is_refused_naming_its_field(case):
    with pytest.raises(KdxError) as e:
        parse_spec(changed(case["set"]))
    msg = one_sentence(e.value)
    assert msg.startswith(case["field"] + ":") or msg.startswith(case["field"] + " "), msg
    for w in case["words"]:
        assert w in msg, f"{w!r} not in {msg!r}"


@pytest.mark.parametrize("name,words", [
    ("duplicate_key.yaml", ["line 2", "'name' is given twice"]),
    ("not_utf8.yaml", ["not UTF-8"]),
    ("broken.yaml", ["not valid YAML", "line 2"]),
    ("a_list.yaml", ["got list", "mapping"]),
    ("empty.yaml", ["got NoneType", "mapping"]),
])
def test_bad_spec_files(name, words):
    with pytest.raises(KdxError) as e:
        load_spec(HERE / name)
    msg = one_sentence(e.value)
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_a_directory_or_a_missing_file(tmp_path):
    with pytest.raises(KdxError, match="a directory"):
        load_spec(HERE)
    with pytest.raises(KdxError, match="no such file"):
        load_spec(tmp_path / "nope.yaml")


def test_cli_refuses_in_one_line(capsys):
    from kdx.cli import main

    for argv, words in ((["validate", str(ROOT / "searches")], ["a directory"]),
                        (["validate", str(HERE / "duplicate_key.yaml")], ["given twice"]),
                        (["train", "--student", "cnn1d_w4", "--seed", "-1"], ["seed", "-1"])):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("kdx: error: "), err
        assert all(w in err for w in words), err
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("kdx ")
