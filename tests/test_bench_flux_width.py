"""`ditflow bench flux-width` at a reduced width: its functions run in seconds and its checks hold."""
from __future__ import annotations

import pytest
import torch

from ditflow import bench
from ditflow.bench import flux_width as fw
from ditflow.pipelines.routing import routing_mask

# FLUX.1's shape at a fraction of its width: 2 heads × 32, text states 64 wide, RoPE axes summing to 32
NARROW = dict(attention_head_dim=32, num_attention_heads=2, joint_attention_dim=64, pooled_projection_dim=32,
              in_channels=16, axes_dims_rope=(4, 14, 14))
TEXT = 16


@pytest.fixture(scope="module")
def report():
    # 8² grid, r 3; the C kernel forced: an 8² grid is below the size where the dispatch picks it
    return fw.main(sizes=(8 * fw.PX_PER_TOKEN,), radius=3, repeats=1, text_len=TEXT, quiet=True, backend="cpu",
                   **NARROW)


def test_local_attention_is_exact_and_every_row_is_there(report):
    (res,) = report["results"]
    assert res["grid"] == 8 and res["tokens"] == TEXT + 64
    for kind in ("double", "single"):
        att = res["blocks"][kind]["attention"]
        rows = {r["method"]: r for r in att["rows"]}
        assert att["backend"] == "cpu"
        assert list(rows) == ["SDPA (FLUX)", "local", "SDPA + mask (stock)", "local + routing"]
        assert all(rows[m]["max_err"] < fw.GOAL_ERR for m in list(rows)[1:])
        # the routing reads fewer text keys: a higher bound than the window alone
        assert 1 < rows["local"]["flop_bound"] < rows["local + routing"]["flop_bound"]
        assert all(r["ms"] > 0 for r in rows.values())
        assert rows["local + routing"]["mask_mib"] < rows["SDPA + mask (stock)"]["mask_mib"]
        blocks = [r["method"] for r in res["blocks"][kind]["block"]]
        assert blocks == ["diffusers (SDPA)", "local", "diffusers + mask (stock)", "local + routing"]
        oracles = res["blocks"][kind]["oracles"]
        assert len(oracles) == 4 and max(oracles.values()) < fw.GOAL_ERR
    (proj,) = report["projection"]
    assert min(proj["stock_s"], proj["local_s"], proj["stock_routed_s"], proj["local_routed_s"]) > 0
    assert set(proj["attention_share"]) == {"double", "single"}
    assert report["stitch"]["ok"] and report["stitch"]["small_steps"] == [2, 3]


def test_attention_is_read_from_the_block_after_rope():
    model = fw.build_transformer(0, **NARROW)
    kwargs = fw.block_inputs(model, fw.transformer_inputs(model.config, (4, 5), TEXT))
    assert kwargs["hidden_states"].shape == (1, 20, 64) and kwargs["encoder_hidden_states"].shape == (1, TEXT, 64)
    fw.use_local(model, 2.0, (4, 5), TEXT)
    try:
        q, k, v, kw = fw.attention_inputs(model.single_transformer_blocks[0], kwargs)
    finally:
        fw.processors.remove_local_attention(model)
    assert q.shape == k.shape == v.shape == (1, 2, TEXT + 20, 32)
    assert kw["grid"] == (4, 5) and kw["text_len"] == TEXT


def test_two_panel_routing_reads_shared_text_and_own_clause():
    routing = fw.two_panel_routing((4, 6), text_len=12, shared=2)
    assert routing.owners.tolist() == [-1] * 2 + [0] * 5 + [1] * 5
    left_half = routing.inside[:, 0].reshape(4, 6)
    assert left_half[:, :3].all() and not left_half[:, 3:].any()
    mask = routing.dense[0, 0]
    assert torch.equal(mask, routing_mask(routing.owners, routing.inside))  # what a routed pipeline call passes
    left, right = 12 + 0, 12 + 5  # image tokens (0, 0) and (0, 5)
    assert mask[left, :7].all() and not mask[left, 7:12].any()
    assert mask[right, :2].all() and not mask[right, 2:7].any() and mask[right, 7:12].all()
    assert mask[:12].all() and mask[:, 12:].all()  # text queries and image keys untouched
    mib = routing.mib()
    assert mib["dense_bool"] * 2**20 == 36 ** 2 and mib["compact"] < mib["dense_bool"]


def test_masked_reference_chunks_heads_exactly():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 5, 30, 16, generator=g) for _ in range(3))
    mask = torch.rand(30, 30, generator=g) > 0.3
    mask[:, 0] = True
    whole = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert (fw.masked_reference(q, k, v, mask, chunk=2) - whole).abs().max() < 1e-6


def test_command_name_and_bad_sizes():
    assert "flux-width" in bench.available() and bench.module_path("flux-width").name == "flux_width.py"
    with pytest.raises(SystemExit) as e:
        bench.cli(["flux-width", "--help"])
    assert e.value.code == 0
    with pytest.raises(ValueError, match="multiple of 16"):
        fw.run_size(None, 100)
