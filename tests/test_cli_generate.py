"""`ditflow generate / edit / restore` end to end on a tiny random FLUX pipeline saved with save_pretrained
(tokenizer built locally, no hub); bad input gets one line on stderr, exit code 2, and no output file."""
import random
import shutil

import numpy as np
import pytest
from PIL import Image

from ditflow.cli.generate import stitch_model
from ditflow.cli.main import main
from ditflow.images import load_image, sha256_file
from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.world import scenes as world

FAST = ["--steps", "2", "--quiet"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny") / "flux"
    tiny_flux_pipeline().save_pretrained(path, safe_serialization=True)
    return path


def _fails(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in "\n".join(err) and match in err[-1], err
    return err[-1]


def test_generate_one_image_is_seeded(model_dir, tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for out in (a, b):
        assert main(["generate", "a red circle", "-o", str(out), "--model", str(model_dir), "--size", "32x48",
                     "--seed", "3", *FAST]) == 0
    assert load_image(a).size == (32, 48) and sha256_file(a) == sha256_file(b)


def test_stitch_model_takes_the_stitched_steps(model_dir, tmp_path):
    """--stitch 1 hands every step to --stitch-model: the same weights give the plain image, others do not."""
    other = tmp_path / "other"
    pipe = tiny_flux_pipeline(seed=0)
    pipe.transformer = tiny_flux_pipeline(seed=7).transformer  # same VAE and text encoder, another transformer
    pipe.save_pretrained(other, safe_serialization=True)
    outs = {}
    for name, extra in (("plain", []), ("self", ["--stitch", "1", "--stitch-model", str(model_dir)]),
                        ("other", ["--stitch", "1", "--stitch-model", str(other)]),
                        ("half", ["--stitch", "0.5", "--stitch-at", "1", "--stitch-model", str(other)]),
                        ("half-unguided", ["--stitch", "0.5", "--stitch-at", "1", "--stitch-model", str(other),
                                           "--no-stitch-cfg", "--cfg", "3"]),
                        ("half-guided", ["--stitch", "0.5", "--stitch-at", "1", "--stitch-model", str(other),
                                         "--stitch-cfg", "--cfg", "3"]),
                        ("half-offset", ["--stitch", "0.5", "--stitch-at", "1", "--stitch-model", str(other),
                                         "--stitch-offset"])):
        outs[name] = tmp_path / f"{name}.png"
        assert main(["generate", "a red circle", "-o", str(outs[name]), "--model", str(model_dir), "--size", "32x32",
                     *FAST, *extra]) == 0
    digest = {k: sha256_file(v) for k, v in outs.items()}
    assert digest["self"] == digest["plain"]
    assert len({digest["plain"], digest["other"], digest["half"]}) == 3
    assert digest["half-unguided"] != digest["half-guided"]  # the stitched steps dropped true CFG's second pass
    assert digest["half-offset"] not in (digest["half"], digest["plain"])  # shifted, yet still the other model's


def test_stitch_model_defaults_to_the_late_step_expert_only_for_the_builtins_last_steps():
    assert stitch_model("builtin", 1.0, None) == "builtin-small-late"
    assert stitch_model("builtin", 0.0, None) == stitch_model("builtin", 0.5, None) == "builtin-small"
    assert stitch_model("/some/flux", 1.0, None) == "builtin-small"  # another model: the check names the mismatch
    assert stitch_model("builtin", 1.0, "mine") == "mine"


def test_local_attention_takes_a_radius_or_a_distilled_student(model_dir, tmp_path, capsys):
    """--local-attention R installs the window; a student file also loads its distilled projections, and
    'student' finds the file in the model's own folder. A covering radius changes nothing; a small one does."""
    import torch

    from ditflow.training.distill import WEIGHTS_NAME, make_student, save_student

    teacher = tiny_flux_pipeline().transformer
    student = make_student(teacher, radius=1.5)
    with torch.no_grad():  # a "distilled" student: projections that differ from the teacher's
        for p in student.parameters():
            if p.requires_grad:
                p.mul_(1.5)
    shipped = tmp_path / "with_student"
    shutil.copytree(model_dir, shipped)
    save_student(student, shipped / WEIGHTS_NAME, {"radius": 1.5, "model": "tiny"})
    outs = {}
    for name, model, extra in (("plain", model_dir, []), ("covering", model_dir, ["--local-attention", "100"]),
                               ("window", model_dir, ["--local-attention", "1.5"]),
                               ("file", model_dir, ["--local-attention", str(shipped / WEIGHTS_NAME)]),
                               ("student", shipped, ["--local-attention", "student"])):
        outs[name] = tmp_path / f"{name}.png"
        assert main(["generate", "a red circle", "-o", str(outs[name]), "--model", str(model), "--size", "64x64",
                     *FAST, *extra]) == 0
    digest = {k: sha256_file(v) for k, v in outs.items()}
    assert digest["covering"] == digest["plain"]
    assert digest["file"] == digest["student"]
    assert len({digest["plain"], digest["window"], digest["file"]}) == 3
    out = tmp_path / "x.png"
    m = ["--model", str(model_dir), *FAST]
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--local-attention", "0", *m], "must be a positive")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--local-attention", "wide", *m], "not a radius")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--local-attention", "student", *m], "has no")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not safetensors")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--local-attention", str(junk), *m], "student file")
    other = tmp_path / "other.safetensors"  # distilled from a differently shaped transformer
    save_student(student, other, {"radius": 2})
    with torch.no_grad():
        from safetensors.torch import load_file, save_file

        state = {k: torch.zeros(3, 3) for k in load_file(str(other))}
        save_file(state, str(other), metadata={"radius": "2"})
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--local-attention", str(other), *m], "does not fit")
    assert not out.exists()


def test_prompts_file_and_panels_write_numbered_images(model_dir, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\na blue square\na green triangle\n")
    out = tmp_path / "many"
    assert main(["generate", "--prompts-file", str(prompts), "-o", str(out), "--model", str(model_dir), "--size",
                 "32x32", *FAST]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0001.png", "0002.png", "0003.png"]
    group = tmp_path / "group"
    # a diffusers folder's native panel is FLUX's 512 px: --size sets each panel's, so the test stays small
    assert main(["generate", "--panels", "3", "the same circle | a red circle | a blue circle | a green circle",
                 "-o", str(group), "--model", str(model_dir), "--size", "32x48", *FAST]) == 0
    assert sorted(p.name for p in group.iterdir()) == ["0001.png", "0002.png", "0003.png"]
    assert {Image.open(p).size for p in group.iterdir()} == {(32, 48)}


def test_bad_input_is_one_line_and_writes_nothing(model_dir, tmp_path, capsys):
    out = tmp_path / "x.png"
    m = ["--model", str(model_dir)]
    _fails(capsys, ["generate", "   ", "-o", str(out), *m], "prompt is empty")
    _fails(capsys, ["generate", "x" * 5000, "-o", str(out), *m], "limit is 2000")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--size", "30x32", *m], "multiples of 16")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--size", "big", *m], "WIDTHxHEIGHT")
    _fails(capsys, ["generate", "o | a | b", "-o", str(out), "--panels", "3", *m], "gives 2 panel")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--stitch", "0.4", "--stitch-at", "2", *m], "--stitch-at 2")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--stitch-at", "1", *m], "--stitch-at needs")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--stitch-model", str(model_dir), *m],
           "--stitch-model needs")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--no-stitch-cfg", *m], "--stitch-cfg needs")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--stitch-offset", *m], "--stitch-offset needs the")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--stitch", "0.4", "--stitch-offset", *m],
           "needs --stitch-at > 0")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--stitch", "0.5", "--stitch-model", "builtin-small",
                    *m, *FAST], "same latent space")  # the builtin's latents are not the tiny model's
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--stitch", "0.5", "--stitch-model", f"{model_dir}#nope",
                    *m, *FAST], "missing nope/config.json")  # only the transformer is loaded: its folder is named
    bad = tmp_path / "prompts.txt"
    bad.write_text("a red circle\n" + "y" * 3000 + "\n")
    _fails(capsys, ["generate", "--prompts-file", str(bad), "-o", str(tmp_path / "d"), *m], "line 2 of")
    _fails(capsys, ["generate", "a circle", "-o", str(out), "--model", str(tmp_path / "nope")],
           f"{tmp_path / 'nope'} does not exist")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "transformer")
    line = _fails(capsys, ["generate", "a circle", "-o", str(out), "--model", str(broken), *FAST], str(broken))
    assert "transformer" in line  # names what is missing
    assert not out.exists() and not (tmp_path / "d").exists()


def test_edit_and_restore_commands(model_dir, tmp_path, capsys):
    scene = world.sample(random.Random(5), "two")
    src = tmp_path / "scene.png"
    scene.image.save(src)
    obj = scene.spec.panels[0].objects[0]
    new = "blue" if obj.color != "blue" else "red"
    out = tmp_path / "edited.png"
    assert main(["edit", str(src), f"make the {obj.color} {obj.shape} {new}", "-o", str(out),
                 "--model", str(model_dir), *FAST]) == 0
    a, b = np.asarray(load_image(out)), np.asarray(scene.image)
    assert a.shape == b.shape and 0 < (a != b).any(-1).mean() < 0.3  # only the object's box changed
    small = tmp_path / "small.png"
    scene.image.resize((16, 16), Image.BOX).save(small)
    big = tmp_path / "big.png"
    capsys.readouterr()
    # a random model restores nothing: the check hands back the input, enlarged, and the exit status says so
    assert main(["restore", str(small), "-o", str(big), "--degradation", "sr2", "--model", str(model_dir), *FAST]) == 4
    assert load_image(big).size == (32, 32) and "failed its check" in capsys.readouterr().out
    mask = tmp_path / "mask.png"
    Image.new("L", (10, 10), 255).save(mask)
    _fails(capsys, ["restore", str(src), "-o", str(tmp_path / "r.png"), "--degradation", "inpaint", "--mask",
                    str(mask), "--model", str(model_dir)], "mask is 10x10 but the image is 64x64")
    _fails(capsys, ["edit", str(src), "make it pop", "-o", str(tmp_path / "e.png"), "--mask", str(mask),
                    "--model", str(model_dir)], "mask is 10x10 but the image is 64x64")
    moved = tmp_path / "moved.png"  # a box moved 8 px right: its pixels land there, the place left is refilled
    assert main(["edit", str(src), "a plain white background", "-o", str(moved), "--box", "0,0,16,16", "--offset",
                 "8,0", "--model", str(model_dir), *FAST]) == 0
    assert (np.asarray(load_image(moved))[:16, 8:24] == np.asarray(scene.image)[:16, :16]).all()
    _fails(capsys, ["edit", str(src), "x", "-o", str(tmp_path / "e.png"), "--offset", "8", "--box", "0,0,8,8",
                    "--model", str(model_dir)], "--offset '8': write it as dx,dy")
    _fails(capsys, ["edit", str(src), "x", "-o", str(tmp_path / "e.png"), "--mode", "move",
                    "--model", str(model_dir)], "--mode move needs --offset")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(src.read_bytes()[:200])
    _fails(capsys, ["restore", str(corrupt), "-o", str(tmp_path / "r.png"), "--model", str(model_dir)], "corrupt")
    assert not (tmp_path / "r.png").exists() and not (tmp_path / "e.png").exists()
