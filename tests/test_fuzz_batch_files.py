"""Fuzzed batch task files at `ditflow.batch.load_tasks`: malformed JSONL and YAML, bytes that are not UTF-8,
deep nesting, YAML tags that would build Python objects, duplicate ids, ids like `../../x` or absolute paths,
and image paths that do not exist.

Each file ends as a list of tasks whose ids are safe folder names (unique, inside the output folder) and whose
image paths are absolute, or as a ValueError/FileNotFoundError whose message names the file and the problem.
A task whose image is missing is accepted here and refused by the image loader with `ImageError` when it runs.
"""
from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import yaml
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from ditflow.batch import load_tasks
from ditflow.images import ImageError, load_image
from ditflow.schemas import ID_PATTERN

FUZZ = settings(max_examples=500, deadline=timedelta(seconds=5), database=None, phases=list(Phase)[:-1],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])

DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
IDS = ["t0", "t1", "t0", "a.b-c_d", "../../x", "..", ".", "/etc/passwd", "a/b", "a\\b", "", " t", "t\n", "x" * 64,
       "x" * 65, "-lead", "ünïcode", "t\x00", "C:\\x", "~", "$HOME", "..hidden", "ok..", 7, None, ["t"]]
IMAGES = ["in.png", "missing.png", "../../etc/passwd", "/etc/shadow", "sub/../in.png", "", "x\x00.png",
          "/nonexistent/a.png", "~/a.png", 3, None]
value = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10),
                  st.sampled_from([[], {}, [1, "a"], {"a": 1}, {"id": "t"}, [[[]]]]))  # wrong types, cheap to draw
task = st.fixed_dictionaries(
    {"id": st.sampled_from(IDS), "instruction": st.one_of(st.just("a red circle"), st.text(max_size=30),
                                                          st.just("x" * 5000), value)},
    optional={"images": st.one_of(st.lists(st.sampled_from(IMAGES), max_size=3), value),
              "seed": st.one_of(st.integers(-5, 2**33), value), "model": st.one_of(st.just("tiny"), value),
              "extra": value})
garbage_lines = st.sampled_from(["{", "}", "[1, 2", "not json", "{'id': 't'}", "null", "[]", "42", '"str"',
                                 "[" * 3000 + "]" * 3000, '{"id": "t", "instruction": "x", "id": "u"}', "# comment",
                                 "   ", "\ufeff{}", "NaN", '{"id": "t", "instruction": "a\\ud800"}'])
jsonl = st.lists(st.one_of(task.map(json.dumps), task.map(json.dumps), garbage_lines), max_size=8).map("\n".join)
yaml_text = st.one_of(
    st.lists(task, max_size=6).map(lambda ts: yaml.dump(ts, Dumper=DUMPER, allow_unicode=True)),
    st.lists(task, max_size=6).map(lambda ts: yaml.dump({"tasks": ts}, Dumper=DUMPER)),
    value.map(lambda v: yaml.dump(v, Dumper=DUMPER)),
    st.text(max_size=200),
    st.sampled_from([
        "- !!python/object/apply:os.system ['touch /tmp/ditflow-fuzz-pwned']",
        "!!python/object/new:os.system [echo pwned]",
        "a: &a [*a]", "- &x {id: t, instruction: x}\n- *x",
        "tasks: {id: t}", "tasks: 3", "- [" * 500, "- {" * 500, ":\n  - :", "\t- x", "---\n---\n", "%YAML 9.9\n---\n[]",
        "lol: &l ['lol','lol','lol','lol','lol']\nl2: &l2 [*l,*l,*l,*l,*l]\nl3: &l3 [*l2,*l2,*l2,*l2,*l2]\ntasks: *l3",
    ]))


def check_file(folder: Path, name: str, data: bytes) -> None:
    path = folder / name
    path.write_bytes(data)
    try:
        tasks = load_tasks(path)
    except (ValueError, FileNotFoundError) as e:
        assert str(path) in str(e) or path.name in str(e), f"the error does not name the file: {e}"
        return
    out = (folder / "out").resolve()
    ids = [t.id for t in tasks]
    assert len(set(ids)) == len(ids)
    for t in tasks:
        assert re.match(ID_PATTERN, t.id) and ".." not in t.id
        assert (out / t.id).resolve().parent == out  # the task's folder is a direct child of the output folder
        for p in t.images:
            assert Path(p).is_absolute()
            if not Path(p).is_file():
                try:
                    load_image(p)
                except ImageError as e:
                    assert "no such file" in str(e) or "not a readable image" in str(e)
                else:
                    raise AssertionError(f"{p} is not a file, yet it loaded")


@FUZZ
@given(text=jsonl)
@example(text='{"id": "ok..", "instruction": "a red circle"}')  # CI: the id pattern alone let '..' through
def test_jsonl(tmp_path_factory, text):
    folder = tmp_path_factory.mktemp("jsonl")
    load_image_fixture(folder)
    check_file(folder, "tasks.jsonl", text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(text=yaml_text, ext=st.sampled_from(["yaml", "yml"]))
def test_yaml(tmp_path_factory, text, ext):
    folder = tmp_path_factory.mktemp("yaml")
    load_image_fixture(folder)
    check_file(folder, f"tasks.{ext}", text.encode("utf-8", "surrogatepass"))
    assert not Path("/tmp/ditflow-fuzz-pwned").exists()  # YAML tags never build Python objects


@FUZZ
@given(data=st.binary(max_size=300), ext=st.sampled_from(["jsonl", "yaml", "json", ""]))
def test_bytes_that_may_not_be_text(tmp_path_factory, data, ext):
    check_file(tmp_path_factory.mktemp("bytes"), f"tasks.{ext}" if ext else "tasks", data)


def load_image_fixture(folder: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / "in.png")
