"""Task files: JSONL and YAML parse the same; every mistake names its line or entry."""
import json

import pytest

from ditflow.batch import load_tasks


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_jsonl_and_yaml_give_the_same_tasks_with_paths_resolved(tmp_path):
    jl = write(tmp_path, "t.jsonl", "# comment\n" + json.dumps({"id": "a", "instruction": "a red circle"}) + "\n\n"
               + json.dumps({"id": "b", "instruction": "recolour it", "images": ["in/x.png"], "seed": 3,
                             "model": "tiny"}) + "\n")
    ym = write(tmp_path, "t.yaml", "tasks:\n  - {id: a, instruction: a red circle}\n"
               "  - id: b\n    instruction: recolour it\n    images: [in/x.png]\n    seed: 3\n    model: tiny\n")
    a, b = load_tasks(jl), load_tasks(ym)
    assert a == b
    assert a[1].images == [str(tmp_path / "in" / "x.png")] and a[1].seed == 3 and a[0].model is None


@pytest.mark.parametrize("text, message", [
    ('{"id": "a", "instruction": "x"}\n{"id": "a", "instruction": "y"}\n', "line 2: duplicate id 'a'"),
    ('{"id": "a", "instruction": "x"}\n{oops\n', "t.jsonl:2: not valid JSON"),
    ('{"id": "a"}\n', "line 1: instruction: Field required"),
    ('{"id": "../up", "instruction": "x"}\n', "line 1: id: String should match pattern"),
    ('{"id": "a", "instruction": "x", "colour": "red"}\n', "line 1: colour: Extra inputs are not permitted"),
    ('{"id": "a", "instruction": "x", "seed": -1}\n', "line 1: seed"),
    ('{"id": "a", "instruction": "x", "model": "~0"}\n', "line 1: model: model folder ~0 does not exist"),
    ('{"id": "a", "instruction": "x", "accelerate": "warp"}\n', "line 1: accelerate: 'warp' is not off, auto"),
    ("\n# nothing\n", "no tasks found"),
])
def test_bad_task_files_fail_with_the_line_and_the_fix(tmp_path, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_tasks(write(tmp_path, "t.jsonl", text))


def test_bad_yaml_shapes(tmp_path):
    with pytest.raises(ValueError, match="expected a list of tasks"):
        load_tasks(write(tmp_path, "t.yml", "id: a\n"))
    with pytest.raises(ValueError, match="entry 2: instruction"):
        load_tasks(write(tmp_path, "t.yml", "- {id: a, instruction: x}\n- {id: b}\n"))
    with pytest.raises(FileNotFoundError):
        load_tasks(tmp_path / "missing.jsonl")
