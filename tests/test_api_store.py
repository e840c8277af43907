"""Settings, the session store, atomic writes, manifests and the Session's input checks: the parts of the
interfaces that need no model."""
import json
import random
from pathlib import Path

import pytest

from ditflow.api import MANIFEST_FILE, Session, Turn, read_manifest
from ditflow.config import Settings
from ditflow.images import ImageError, save_image_atomic
from ditflow.schemas import Plan, Step, TurnRecord
from ditflow.sessions import SessionStore, write_json_atomic
from ditflow.world import scenes as world


def scene(tmp_path: Path, name: str, seed: int = 0) -> Path:
    img = world.render(world.sample_spec(random.Random(seed), "single"), random.Random(seed))
    return save_image_atomic(img, tmp_path / name)


# ----------------------------------------------------------------------------- settings
def test_settings_precedence_env_then_arguments(monkeypatch, tmp_path):
    monkeypatch.setenv("DITFLOW_MODEL", "builtin-small")
    monkeypatch.setenv("DITFLOW_HOME", str(tmp_path))
    monkeypatch.setenv("DITFLOW_VERIFY", "false")
    s = Settings.load()
    assert (s.model, s.home, s.verify) == ("builtin-small", tmp_path, False)
    assert Settings.load(model="tiny", verify=True).model == "tiny"
    assert Settings.load(model=None).model == "builtin-small"  # None means "not given"


def test_settings_reject_bad_values_with_clear_messages():
    with pytest.raises(ValueError, match="device 'tpu' is not one of"):
        Settings.load(device="tpu")
    with pytest.raises(ValueError, match="unknown setting"):
        Settings.load(modle="tiny")
    with pytest.raises(ValueError):
        Settings.load(seed=-1)


# ----------------------------------------------------------------------------- atomic writes and the store
def test_write_json_atomic_keeps_old_content_when_writing_fails(tmp_path):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})  # not serialisable: fails before anything is replaced
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temp file left behind


def test_store_create_list_load_and_errors(tmp_path):
    store = SessionStore(tmp_path)
    a = store.create(model="tiny", llm="rules")
    b = store.create(model="builtin", llm="rules", session_id="mine")
    assert {m.id for m in store.list()} == {a.id, "mine"}
    assert store.latest().id == "mine"
    assert store.load("mine").model == "builtin"
    with pytest.raises(ValueError, match="no session 'nope'"):
        store.load("nope")
    with pytest.raises(ValueError, match="invalid id"):
        store.load("../etc")
    with pytest.raises(ValueError, match="already exists"):
        store.create(model="tiny", llm="rules", session_id="mine")
    (store.dir(b.id) / "session.json").write_text("{ torn")  # an unreadable session is skipped, not fatal
    assert [m.id for m in store.list()] == [a.id]


def test_two_stores_on_two_homes_do_not_see_each_other(tmp_path):
    one, two = SessionStore(tmp_path / "1"), SessionStore(tmp_path / "2")
    one.create(model="tiny", llm="rules", session_id="s")
    assert two.list() == [] and not two.exists("s")


# ----------------------------------------------------------------------------- turns and manifests
def make_turn(tmp_path: Path, n_images: int = 2, article: str | None = "# Book\n\npage one") -> Turn:
    folder = tmp_path / "turn"
    names = [scene(folder, f"{i:04d}.png", seed=i).name for i in range(1, n_images + 1)]
    plan = Plan(steps=[Step(tool="group", prompt="[TWO-PANEL] ...", outputs=list(range(1, n_images + 1)))])
    record = TurnRecord(turn=1, instruction="a two-page book", images=names, plan=plan, article_markdown=article,
                        model="tiny", llm="rules", seed=7)
    return Turn(record, folder)


def test_turn_save_writes_every_file_and_a_manifest_that_checks_them(tmp_path):
    turn = make_turn(tmp_path)
    out = tmp_path / "out"
    turn.save(out, settings=Settings.load(model="tiny"), task={"id": "t1"})
    assert sorted(p.name for p in out.iterdir()) == ["0001.png", "0002.png", "article.md", MANIFEST_FILE, "plan.json"]
    manifest = read_manifest(out)
    assert manifest.images == ["0001.png", "0002.png"] and manifest.seed == 7 and manifest.task == {"id": "t1"}
    assert set(manifest.files) == {"0001.png", "0002.png", "article.md", "plan.json"}
    assert manifest.settings["model"] == "tiny"
    assert Plan.model_validate_json((out / "plan.json").read_text()) == turn.plan
    assert [im.size for im in Turn(manifest, out).images] == [(64, 64), (64, 64)]
    (out / "0002.png").write_bytes((out / "0001.png").read_bytes())  # a changed file no longer matches
    assert read_manifest(out) is None
    assert read_manifest(out, check_files=False) is not None


def test_turn_without_article_writes_no_article_file(tmp_path):
    out = tmp_path / "out"
    make_turn(tmp_path, 1, article=None).save(out)
    assert not (out / "article.md").exists() and read_manifest(out).images == ["0001.png"]


# ----------------------------------------------------------------------------- input checks (before any model)
def test_session_rejects_bad_input_before_loading_anything(tmp_path):
    with Session(model="tiny", home=tmp_path) as s:
        with pytest.raises(ValueError, match="instruction is empty"):
            s.chat("   ")
        with pytest.raises(ValueError, match="the limit is 4000"):
            s.chat("a" * 4001)
        with pytest.raises(ImageError, match="no such file"):
            s.chat("edit it", [tmp_path / "missing.png"])
        (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        with pytest.raises(ImageError, match="not a readable image"):
            s.attach(tmp_path / "bad.png")
        good = scene(tmp_path, "ok.png")
        with pytest.raises(ValueError, match="at most 8 per turn"):
            s.chat("combine them", [good] * 9)
        assert s._pipeline is None and s.id is None and s.store.list() == []  # nothing loaded, nothing written
    with pytest.raises(ValueError, match="nothing to undo"):
        Session(model="tiny", home=tmp_path).undo()


def test_non_persistent_session_cleans_its_temp_folder():
    s = Session(model="tiny", persist=False)
    tmp = s.store.home
    assert tmp.is_dir()
    s.close()
    assert not tmp.exists()
