"""`ditflow run`: the files it promises (images, plan, article, manifest), refusal to mix runs, clear errors.
Real runs of the CLI on the tiny random FLUX pipeline."""
import json
import os
import random
import subprocess
import sys

import pytest

from ditflow.api import read_manifest
from ditflow.cli.main import EXIT_MISMATCH, EXIT_OK
from ditflow.cli.run import prepare_out
from ditflow.images import save_image_atomic, sha256_file
from ditflow.world import scenes as world

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ditflow.cli", "run", *args, "--model", "tiny", "-q"], env=ENV,
                          capture_output=True, text=True, timeout=600)


def test_prepare_out_refuses_to_mix_runs(tmp_path):
    prepare_out(tmp_path / "new", overwrite=False)  # a missing folder is fine
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "0001.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="already holds a run; choose another -o or pass --overwrite"):
        prepare_out(tmp_path, overwrite=False)
    prepare_out(tmp_path, overwrite=True)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="is not a folder"):
        prepare_out(tmp_path / "file", overwrite=False)


def test_bad_input_image_fails_cleanly_and_writes_nothing(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 10)
    r = run("make it blue", "-i", str(tmp_path / "broken.png"), "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "broken.png: not a readable image" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_bad_setting_names_the_field_in_one_line(tmp_path):
    r = run("a red circle", "--max-repairs", "-1", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip() == "ditflow run: error: max_repairs: Input should be greater than or equal to 0"


def test_picture_book_writes_images_plan_article_and_manifest(tmp_path):
    out = tmp_path / "book"
    r = run("a four-page picture book about a red circle that turns blue", "-o", str(out))
    assert r.returncode == EXIT_MISMATCH, r.stderr  # finished; the tiny model's random pages never match
    assert "0001.png does not match" in r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == ["0001.png", "0002.png", "0003.png", "0004.png", "article.md", "manifest.json", "plan.json",
                     "repairs"]
    m = read_manifest(out)
    assert m is not None and m.instruction.startswith("a four-page picture book")
    assert m.repairs and all((out / a.file).is_file() for a in m.repairs if a.file)  # every file it names
    assert (m.model, m.llm) == ("tiny", "rules") and m.tool_calls and m.timings.total_s > 0
    assert json.loads((out / "plan.json").read_text())["steps"]
    article = (out / "article.md").read_text()
    assert all(f"000{i}.png" in article for i in range(1, 5))  # the article shows every page
    again = run("a four-page picture book about a red circle that turns blue", "-o", str(out))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_edit_records_its_input_and_hash(tmp_path):
    src = save_image_atomic(world.render(world.sample_spec(random.Random(1), "single"), random.Random(1)),
                            tmp_path / "in.png")
    out = tmp_path / "edit"
    r = run("make the object in image 1 blue", "-i", str(src), "-o", str(out))
    assert r.returncode in (EXIT_OK, EXIT_MISMATCH), r.stderr  # the tiny model's redraw may or may not match
    m = read_manifest(out)
    assert [i["sha256"] for i in m.inputs] == [sha256_file(src)]
    assert m.images == ["0001.png"] and not (out / "article.md").exists()
