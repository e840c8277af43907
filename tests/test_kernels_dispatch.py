"""The crossover dispatch: `local_pays` on hand-made tables, the shipped table, `when="faster"` on a tiny random
Flux transformer (full attention bit for bit below the crossover, local above it), a student kept out of the
teacher's weights, `bench attention --store`, and the bounded FlexAttention recompiles."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from ditflow.kernels import crossover
from ditflow.kernels import local_attention as la
from ditflow.kernels.local_attention import TextRouting
from ditflow.kernels.processors import install_local_attention, remove_local_attention
from ditflow.pipelines.tiny import tiny_flux_pipeline
from ditflow.training import distill
from flux_inputs import transformer_inputs


def _entry(device="cpu", dtype="float32", head_dim=64, points=((100, 0.5, 1.0), (1000, 2.0, 5.0),
                                                                (10000, 8.0, 20.0)), backends=("cpu",)):
    """An entry with points (tokens, speedup, flop_ratio) for each of `backends`; the other point fields do not
    enter the estimate."""
    return dict(device=device, dtype=dtype, head_dim=head_dim, machine="test", torch="test", commit="test",
                date="2026-01-01", command="test",
                points=[dict(tokens=t, grid=[1, 1], radius=1.0, text_len=0, heads=1, backend=b, speedup=s,
                             flop_ratio=f) for b in backends for t, s, f in points])


def _table(*entries):
    return crossover.check_table({"entries": list(entries)})


# ----------------------------------------------------------------------------- local_pays on hand-made tables
def test_below_and_above_the_crossover():
    table = _table(_entry())
    big, small = (96, 96), (8, 8)  # 9248 tokens, flop ratio ~37 (r 8); 96 tokens: below the smallest point
    assert crossover.local_pays("cpu", torch.float32, 64, big, 8, 32, table)
    assert not crossover.local_pays("cpu", torch.float32, 64, small, 8, 32, table)
    assert crossover.estimated_speedup("cpu", torch.float32, 64, small, 8, 32, table) is None
    mid = (20, 20)  # 432 tokens: the fraction there is ~0.33, the bound ~2.4: under the 1.1× margin or not?
    est = crossover.estimated_speedup("cpu", torch.float32, 64, mid, 8, 32, table)
    assert crossover.local_pays("cpu", torch.float32, 64, mid, 8, 32, table) == (est >= crossover.MIN_SPEEDUP)
    # a covering radius: the bound is 1, so local cannot pay at any realised fraction below 1
    assert not crossover.local_pays("cpu", torch.float32, 64, big, 500, 32, table)


def test_no_entry_for_the_device_or_dtype_says_no():
    table = _table(_entry(points=((1, 100.0, 1.0),)))  # local "wins" everywhere on cpu float32
    assert crossover.local_pays("cpu", torch.float32, 64, (64, 64), 4, 8, table)
    assert crossover.local_pays("cpu", "float32", 64, (64, 64), 4, 8, table)  # a dtype by name works too
    assert not crossover.local_pays("cuda", torch.float32, 64, (64, 64), 4, 8, table)
    assert not crossover.local_pays("cpu", torch.bfloat16, 64, (64, 64), 4, 8, table)
    assert not crossover.local_pays("mps", torch.float32, 64, (64, 64), 4, 8, table)
    assert not crossover.local_pays("cpu", torch.float32, 64, (64, 64), 4, 8, {"entries": []})


def test_only_the_calls_own_backend_counts_and_full_work_never_pays():
    table = _table(_entry(points=((1, 100.0, 1.0),), backends=("cpu", "flex")))
    pays = lambda b: crossover.local_pays("cpu", torch.float32, 64, (64, 64), 4, 8, table, backend=b)  # noqa: E731
    assert pays(None) and pays("cpu") and pays("flex")
    assert not pays("tiled")  # measured for other backends only
    assert not pays("dense") and not pays("sdpa")  # masked SDPA does all the work: its fraction would mislead
    slow_small = _table(_entry(points=((100, 0.2, 1.0), (1000, 5.0, 5.0))))
    assert crossover.realised_fraction(slow_small["entries"][0], 500, "cpu") > 0.2


def test_the_nearest_head_dim_answers():
    wins, loses = ((1, 100.0, 1.0),), ((1, 0.01, 1.0),)
    table = _table(_entry(head_dim=32, points=wins), _entry(head_dim=128, points=loses))
    pays = lambda d: crossover.local_pays("cpu", torch.float32, d, (64, 64), 4, 8, table)  # noqa: E731
    assert pays(16) and pays(32) and pays(48) and pays(80)  # 80: a tie, the smaller head_dim answers
    assert not pays(100) and not pays(128) and not pays(256)
    assert crossover.nearest_entry(table, "cpu", torch.float32, 64)["head_dim"] == 32


def test_the_fraction_is_interpolated_in_log_tokens():
    entry = _entry()  # fractions 0.5, 0.4, 0.4 at 100, 1000, 10000 tokens
    assert crossover.realised_fraction(entry, 99) is None
    assert crossover.realised_fraction(entry, 100) == pytest.approx(0.5)
    assert crossover.realised_fraction(entry, 10 ** 2.5) == pytest.approx(0.45)  # halfway in log tokens
    assert crossover.realised_fraction(entry, 10 ** 2.25) == pytest.approx(0.475)
    assert crossover.realised_fraction(entry, 10 ** 6) == pytest.approx(0.4)  # held flat past the largest
    grid, r, t = (20, 30), 6.0, 16  # 616 tokens: between the first two points
    tokens = t + 20 * 30
    want = la.flop_ratio(grid, r, t) * (0.5 - 0.1 * math.log(tokens / 100) / math.log(10))
    assert crossover.estimated_speedup("cpu", torch.float32, 64, grid, r, t, _table(entry)) == pytest.approx(want)


def test_a_bad_table_is_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="lacks"):
        crossover.check_table({"entries": [{"device": "cpu"}]})
    with pytest.raises(ValueError, match="positive"):
        crossover.check_table(_table(_entry(points=((0, 1.0, 1.0),))))
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"entries": "nope"}))
    with pytest.raises(ValueError, match=str(path)):
        crossover.load_table(path)
    assert crossover.load_table(tmp_path / "missing.json") == {"entries": []}


# ----------------------------------------------------------------------------- the shipped table
def test_the_shipped_table_is_valid_and_measured_where_it_is_used():
    table = crossover.load_table(crossover.TABLE_PATH)
    keys = {(e["device"], e["dtype"], e["head_dim"]) for e in table["entries"]}
    assert {("cpu", "float32", 32), ("cpu", "float32", 64), ("cpu", "float32", 128)} <= keys
    assert any(d == "cuda" for d, _, _ in keys)
    for e in table["entries"]:
        assert e["machine"] and e["torch"] and e["commit"] and e["date"]
        assert e["command"].startswith("ditflow bench attention")
        for p in e["points"]:
            (h, w), r, t = p["grid"], p["radius"], p["text_len"]
            assert p["tokens"] == t + h * w
            assert p["flop_ratio"] == pytest.approx(la.flop_ratio((h, w), r, t), rel=1e-4)
    def pays(device, dtype, d, side, radius, text_len):
        probe = torch.empty(1, 1, text_len + side * side, 0)
        backend = "flex" if device == "cuda" else la.choose_backend(probe, (side, side), radius, text_len, False)
        return crossover.local_pays(device, dtype, d, (side, side), radius, text_len, table, backend=backend)

    for d in (32, 64, 128):  # no at small grids (masked SDPA), yes at 128² (the C kernel measured ~25-35× there)
        assert not any(pays("cpu", torch.float32, d, side, r, 32) for side in (8, 12, 16) for r in (2, 4, 6, 8))
        assert pays("cpu", torch.float32, d, 128, 8, 32) and pays("cpu", torch.float32, d, 128, 6, 77)
    assert not pays("cuda", torch.bfloat16, 128, 64, 8, 512)  # FLUX at 1024²: flash SDPA wins on the H200
    assert not pays("cuda", torch.float32, 64, 64, 8, 32) and pays("cuda", torch.float32, 64, 256, 8, 32)


# ----------------------------------------------------------------------------- when="faster" on a transformer
def _run(model, **kw):
    with torch.no_grad():
        return model(**kw)[0]


NEVER = {"entries": []}
ALWAYS = {"entries": [_entry(head_dim=16, points=((1, 1000.0, 1.0),), backends=("cpu", "tiled", "flex"))]}
SPARSE = (20, 20)  # 406 tokens at r 2.5: the C kernel's (or tiled) size, where a table can say yes


@pytest.fixture
def use_table(tmp_path, monkeypatch):
    def use(table):
        path = tmp_path / "crossover.json"
        path.write_text(json.dumps(table))
        monkeypatch.setenv("DITFLOW_CROSSOVER_TABLE", str(path))
    return use


@pytest.fixture(scope="module")
def transformer():
    return tiny_flux_pipeline(seed=1).transformer.eval()


def test_faster_below_the_crossover_is_the_stock_processors_bit_for_bit(transformer, use_table):
    kw = transformer_inputs(transformer, *SPARSE, seed=2)
    small = transformer_inputs(transformer, 12, 10, seed=2)  # 126 tokens: masked SDPA would run, which never pays
    stock, stock_small = _run(transformer, **kw), _run(transformer, **small)
    install_local_attention(transformer, radius=2.5)
    local = _run(transformer, **kw)
    use_table(NEVER)
    handle = install_local_attention(transformer, radius=2.5, when="faster")
    try:
        assert torch.equal(_run(transformer, **kw), stock)
        assert handle.counts == {"full": 2}  # one double-stream and one single-stream block
        use_table(ALWAYS)  # a table that says yes: the local path, exactly what "always" computes
        assert torch.equal(_run(transformer, **kw), local) and not torch.equal(local, stock)
        assert handle.counts == {"full": 2, "local": 2} and handle.when == "faster"
        assert torch.equal(_run(transformer, **small), stock_small)
        assert handle.counts == {"full": 4, "local": 2}
    finally:
        remove_local_attention(transformer)



def test_faster_passes_the_attention_mask_to_full_attention(transformer, use_table):
    rows, cols, text_len = 6, 6, 6
    length = text_len + rows * cols
    mask = torch.ones(1, 1, length, length, dtype=torch.bool)
    mask[..., text_len:, :3] = False  # image tokens do not read the first three text tokens
    stock = _run(transformer, **transformer_inputs(transformer, rows, cols, mask=mask))
    assert not torch.equal(stock, _run(transformer, **transformer_inputs(transformer, rows, cols)))  # the mask matters
    use_table(NEVER)
    install_local_attention(transformer, radius=2, when="faster")
    try:
        assert torch.equal(_run(transformer, **transformer_inputs(transformer, rows, cols, mask=mask)), stock)
        compact = TextRouting.from_dense(mask, text_len)  # what clause routing hands local attention
        assert torch.equal(_run(transformer, **transformer_inputs(transformer, rows, cols, mask=compact)), stock)
    finally:
        remove_local_attention(transformer)


def test_when_is_checked():
    with pytest.raises(ValueError, match="when must be one of"):
        install_local_attention(torch.nn.Module(), radius=2, when="sometimes")


# ----------------------------------------------------------------------------- a student with when="faster"
def _student_file(teacher, path, seed=0):
    """A student file as `ditflow train distill` writes one: the image-stream projections, changed, and r."""
    g = torch.Generator().manual_seed(seed)
    state = {n: (p.detach() + 0.05 * torch.randn(p.shape, generator=g)).contiguous()
             for n, p in teacher.named_parameters()
             if ".attn." in n and n.split(".attn.")[1].rsplit(".", 1)[0] in distill.IMAGE_STREAM}
    save_file(state, str(path), metadata={"radius": "2.5", "model": "tiny"})
    return state


def test_a_faster_student_leaves_the_teacher_untouched(tmp_path, use_table):
    teacher = tiny_flux_pipeline(seed=1).transformer.eval()
    path = tmp_path / "student.safetensors"
    state = _student_file(teacher, path)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    kw = transformer_inputs(teacher, *SPARSE, seed=3)
    teacher_out = _run(teacher, **kw)

    use_table(NEVER)
    handle = distill.load_student(teacher, path, when="faster")
    assert handle.when == "faster" and handle.radius == 2.5
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert torch.equal(_run(teacher, **kw), teacher_out)  # below the crossover: the teacher exactly
    use_table(ALWAYS)
    faster_local = _run(teacher, **kw)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert handle.counts == {"full": 2, "local": 2}
    remove_local_attention(teacher)

    copied = tiny_flux_pipeline(seed=1).transformer.eval()  # "always": the projections copied in place
    distill.load_student(copied, path)
    own = dict(copied.named_parameters())
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert (_run(copied, **kw) - faster_local).abs().max() < 1e-6
    assert not torch.equal(faster_local, teacher_out)
    with pytest.raises(ValueError, match="names no projection"):
        install_local_attention(teacher, 2.5, weights={"transformer_blocks.0.attn.to_x.weight": torch.zeros(1)})


# ----------------------------------------------------------------------------- bench attention --store
def test_bench_store_writes_its_own_entry(tmp_path, monkeypatch):
    from ditflow.bench import attention

    shipped = crossover.TABLE_PATH.read_bytes()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # the bench's threads would outlive the test
    table = tmp_path / "table.json"
    argv = ["--grids", "8", "12", "--heads", "2", "--head-dim", "16", "--repeats", "1", "--threads", "1",
            "--methods", "local (auto)", "--store"]
    assert attention.cli(argv + ["--table", str(table)]) == 0
    (entry,) = json.loads(table.read_text())["entries"]
    assert (entry["device"], entry["dtype"], entry["head_dim"]) == ("cpu", "float32", 16)
    assert [p["grid"] for p in entry["points"]] == [[8, 8], [12, 12]]
    assert all(p["heads"] == 2 and p["text_len"] == 32 and p["speedup"] > 0 for p in entry["points"])
    assert [p["backend"] for p in entry["points"]] == ["dense", "dense"]  # what local (auto) ran there
    assert entry["points"][1]["flop_ratio"] == pytest.approx(la.flop_ratio((12, 12), 8.0, 32), rel=1e-4)
    assert entry["command"].startswith("ditflow bench attention --grids 8 12 --heads 2 --head-dim 16")
    assert entry["machine"] == crossover.machine() and entry["torch"] == torch.__version__

    monkeypatch.setenv("DITFLOW_CROSSOVER_TABLE", str(table))  # the same key again replaces; another adds
    attention.cli(argv)
    attention.cli(argv[:6] + ["24"] + argv[7:])
    entries = json.loads(table.read_text())["entries"]
    assert [e["head_dim"] for e in entries] == [16, 24]
    assert crossover.TABLE_PATH.read_bytes() == shipped
    with pytest.raises(ValueError, match="local \\(auto\\)"):
        attention.main(grids=(8,), methods=["dense masked SDPA"], store=True, table_file=str(table))


# ----------------------------------------------------------------------------- bounded recompiles
def test_compiled_flex_stops_compiling_new_shapes_past_the_limit(monkeypatch):
    """The CUDA path cannot run here: a fake compiled function counts the shapes it would compile."""
    from torch.nn.attention.flex_attention import flex_attention

    seen = []

    def fake_compiled(q, k, v, **kw):
        if tuple(q.shape) not in seen:
            seen.append(tuple(q.shape))
        return flex_attention(q, k, v, **kw)

    monkeypatch.setattr(la, "_compiled_flex", lambda: fake_compiled)
    monkeypatch.setattr(la, "_flex_shapes", set())
    g = torch.Generator().manual_seed(0)
    with pytest.warns(UserWarning, match="shapes compiled for FlexAttention already"):
        for text_len in [*range(la.FLEX_MAX_SHAPES + 2), 0]:  # ten new shapes, then the first one again
            q, k, v = (torch.randn(1, 2, text_len + 25, 16, generator=g) for _ in range(3))
            kw = dict(grid=(5, 5), radius=2.5, text_len=text_len)
            out = la.flex_attention_local(q, k, v, compiled=True, block=16, **kw)
            assert (out - la.dense_attention(q, k, v, **kw)).abs().max() < 1e-4
    assert len(seen) == la.FLEX_MAX_SHAPES and len(la._flex_shapes) == la.FLEX_MAX_SHAPES
