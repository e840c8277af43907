"""Acceleration as a runtime setting (`pipelines/acceleration.py`): the setting's grammar, what `auto` means per
model and device, and the setting reaching every interface: Settings, Session, run, batch task files, generate."""
import json
import subprocess
import sys

import pytest

from ditflow.config import Settings
from ditflow.pipelines.acceleration import Acceleration, auto_setting, parse_acceleration, resolve


@pytest.mark.parametrize("text, canonical", [
    ("off", "off"), ("", "off"), ("AUTO", "auto"), ("stitch", "stitch=0.4"), ("stitch=0.25", "stitch=0.25"),
    ("local", "local=student"), ("local=6", "local=6"), (" local = student , stitch ", "stitch=0.4,local=student"),
])
def test_settings_read_in_one_canonical_spelling(text, canonical):
    assert parse_acceleration(text) == canonical
    assert parse_acceleration(canonical) == canonical  # canonical is a fixed point


@pytest.mark.parametrize("text, message", [
    ("warp", "'warp' is not off, auto"), ("stitch=0", "must be in (0, 1]"), ("stitch=1.5", "must be in (0, 1]"),
    ("stitch=fast", "must be in (0, 1]"), ("local=-2", "positive number of tokens"), ("local=", "needs a window"),
    ("stitch,stitch=0.2", "gives stitch twice"), ("auto,stitch", "'auto' is not off"),
])
def test_bad_settings_say_what_is_wrong_in_one_line(text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        parse_acceleration(text)


def test_auto_turns_on_only_what_was_measured_for_the_model_and_device():
    assert resolve("auto", "builtin", "cpu") == Acceleration(stitch=0.4, local="student")
    assert resolve("auto", "builtin", "cuda:1") == Acceleration(local="student")  # T-Stitch is unmeasured on CUDA
    assert auto_setting("black-forest-labs/FLUX.1-dev", "cuda") == "off"
    assert not resolve("auto", "tiny", "cpu").on
    assert "unaccelerated" in resolve("auto", "tiny", "cpu").describe()


def test_settings_refuse_an_acceleration_the_model_cannot_have(tmp_path):
    assert Settings.load(accelerate="auto", home=tmp_path).accelerate == "auto"
    with pytest.raises(ValueError, match="no small model is known to pair with builtin-small"):
        Settings.load(model="builtin-small", accelerate="stitch", home=tmp_path)
    with pytest.raises(ValueError, match="'warp' is not off"):
        Settings.load(accelerate="warp", home=tmp_path)


def test_a_session_runs_every_turn_stitched_and_records_it(tmp_path):
    from ditflow.api import Session
    from ditflow.pipelines.stitch import stitched

    notices = []
    with Session(accelerate="stitch", persist=False, verify=False,
                 on_progress=lambda e: notices.append(e.message) if e.notice else None) as s:
        turn = s.run("a red circle", [], tmp_path / "a")
        stitch = stitched(s.pipeline)
        assert stitch is not None and stitch.calls["small"] > 0  # the late expert took steps of this turn
        assert turn.record.acceleration == "stitch=0.4"
        assert any("the small model takes the last 40% of the steps" in n for n in notices)
        assert json.loads((tmp_path / "a" / "manifest.json").read_text())["settings"]["accelerate"] == "stitch=0.4"
        s.set_accelerate("off")
        turn = s.run("a red circle", [], tmp_path / "b")
        assert stitched(s.pipeline) is None and turn.record.acceleration == "off"


def test_run_refuses_a_bad_setting_before_anything_loads(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ditflow.cli", "run", "a red circle", "-o", str(tmp_path / "x"),
                          "--accelerate", "warp"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and not (tmp_path / "x").exists()
    assert res.stderr.strip().splitlines() == ["ditflow run: error: accelerate: 'warp' is not off, auto, stitch[=F] "
                                               "or local[=R|student|FILE] (parts separated by commas)"]


def test_auto_on_the_builtin_keeps_full_attention_below_the_crossover_and_the_teacher_untouched(tmp_path):
    from ditflow.api import Session
    from ditflow.kernels.processors import installed
    from ditflow.pipelines.routing import clause_routing
    from ditflow.pipelines.stitch import stitched

    with Session(accelerate="auto", persist=False, verify=False) as s:
        before = {k: v.clone() for k, v in s.pipeline.transformer.state_dict().items() if ".attn.to_q." in k}
        turn = s.run("a two-page picture book about a red circle that turns blue", [], tmp_path / "a")
        local = installed(s.pipeline.transformer)
        assert turn.record.acceleration == "stitch=0.4,local=student" and stitched(s.pipeline) is not None
        assert local.when == "faster" and local.counts["full"] > 0 and local.counts["local"] == 0  # 8² grid: SDPA
        assert clause_routing(s.pipeline).routed_calls > 0  # routing goes on under local attention
        after = s.pipeline.transformer.state_dict()
        assert all(v.equal(after[k]) for k, v in before.items())  # the student's projections are not copied in


def test_generate_takes_the_setting_and_runs_local_attention_above_the_crossover(tmp_path):
    res = subprocess.run([sys.executable, "-m", "ditflow.cli", "generate", "a red circle", "-o",
                          str(tmp_path / "a.png"), "--size", "512x512", "--steps", "2", "-q", "--accelerate",
                          "local=student"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([sys.executable, "-m", "ditflow.cli", "generate", "a red circle", "-o",
                          str(tmp_path / "b.png"), "--accelerate", "stitch", "--stitch", "0.2"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "give one of them" in res.stderr
