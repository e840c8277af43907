"""IDEA-Bench case folders: reading them, and (once the agents run) writing outputs/<model>/<case>/0001.jpg."""
import json
import random
from pathlib import Path

import pytest

from ditflow.bench.ideabench import find_cases, model_dir_name
from ditflow.images import save_image_atomic
from ditflow.world import scenes as world


def make_case(root: Path, name: str, instruction: str, count: int, inputs: int = 0, meta_extra=None) -> Path:
    folder = root / "dataset" / name
    folder.mkdir(parents=True)
    (folder / "instruction.txt").write_text(instruction + "\n")
    (folder / "meta.json").write_text(json.dumps({"task_name": name[:-5], "uid": name, "output_image_count": count,
                                                  **(meta_extra or {})}))
    for i in range(inputs):
        img = world.render(world.sample_spec(random.Random(i), "single"), random.Random(i))
        save_image_atomic(img, folder / f"input_{i + 1:04d}.jpg")
    return folder


def test_cases_are_found_in_the_ideabench_layout(tmp_path):
    make_case(tmp_path, "picture_book_0001", "a four-page picture book about a red circle", 4)
    make_case(tmp_path, "recolor_0001", "make the object in image 1 blue", 1, inputs=1)
    make_case(tmp_path, "listed_0001", "combine them", 1, inputs=2, meta_extra={"input_images": ["input_0002.jpg"]})
    (tmp_path / "dataset" / "not_a_case").mkdir()
    cases = find_cases(tmp_path)
    assert [c.name for c in cases] == ["listed_0001", "picture_book_0001", "recolor_0001"]
    assert [c.output_count for c in cases] == [1, 4, 1]
    assert [p.name for p in cases[0].inputs] == ["input_0002.jpg"]  # meta's list wins over the folder scan
    assert [p.name for p in cases[2].inputs] == ["input_0001.jpg"]
    assert cases[1].instruction == "a four-page picture book about a red circle"
    assert find_cases(tmp_path / "dataset") == cases  # the dataset folder itself works too


def test_broken_cases_name_the_file_and_field(tmp_path):
    make_case(tmp_path, "bad_0001", "x", 1, meta_extra={"output_image_count": 0})
    with pytest.raises(ValueError, match=r"bad_0001/meta.json: output_image_count must be a positive integer"):
        find_cases(tmp_path)
    with pytest.raises(ValueError, match="no IDEA-Bench cases"):
        find_cases(_empty(tmp_path))
    with pytest.raises(FileNotFoundError):
        find_cases(tmp_path / "nowhere")


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_model_dir_names():
    assert model_dir_name("builtin") == "ditflow-builtin"
    assert model_dir_name("black-forest-labs/FLUX.1-dev") == "ditflow-FLUX.1-dev"
    assert model_dir_name("/models/my flux/") == "ditflow-my_flux"


@pytest.mark.skipif(__import__("importlib").util.find_spec("ditflow.agents.graph") is None,
                    reason="the agents graph (run_turn) has not landed yet")
def test_runner_writes_outputs_in_the_ideabench_structure_and_resumes(tmp_path, capsys):
    from PIL import Image

    from ditflow.bench.ideabench import cli

    make_case(tmp_path, "picture_book_0001", "a four-page picture book about a red circle that turns blue", 4)
    make_case(tmp_path, "recolor_0001", "make the object in image 1 blue", 1, inputs=1)
    out = tmp_path / "out"
    assert cli([str(tmp_path), "-o", str(out), "--model", "tiny"]) == 0
    model_dir = out / "outputs" / "ditflow-tiny"
    assert sorted(p.name for p in (model_dir / "picture_book_0001").iterdir()) == [f"000{i}.jpg" for i in range(1, 5)]
    assert sorted(p.name for p in (model_dir / "recolor_0001").iterdir()) == ["0001.jpg"]
    with Image.open(model_dir / "recolor_0001" / "0001.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    summary = json.loads((out / "ideabench.json").read_text())
    assert [(c["case"], c["status"], c["produced"]) for c in summary["cases"]] == [
        ("picture_book_0001", "done", 4), ("recolor_0001", "done", 1)]
    before = (model_dir / "recolor_0001" / "0001.jpg").stat().st_mtime_ns
    assert cli([str(tmp_path), "-o", str(out), "--model", "tiny"]) == 0  # resumes: complete cases are skipped
    summary = json.loads((out / "ideabench.json").read_text())
    assert {c["status"] for c in summary["cases"]} == {"skipped"}
    assert (model_dir / "recolor_0001" / "0001.jpg").stat().st_mtime_ns == before
