"""Clause routing inside CLEAR local attention: `TextRouting` (which text keys each query reads) in every backend
against the dense masked SDPA reference, its dense form and back, the processor on a tiny random Flux transformer
against diffusers' own processors given the combined mask by hand, and a routed pipeline with local attention."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from ditflow.kernels import local_attention as la
from ditflow.kernels.local_attention import TextRouting
from ditflow.kernels.processors import install_local_attention, remove_local_attention
from ditflow.pipelines import routing as clause
from ditflow.pipelines.tiny import tiny_flux_pipeline
from flux_inputs import transformer_inputs

TOL = 1e-5  # fp32 max abs error


def random_routing(b, h, w, t, classes, seed, text_text=True, empty_class=True) -> TextRouting:
    """Random classes and text sets; with `empty_class`, class 0 reads no text key at all and holds some queries."""
    g = torch.Generator().manual_seed(seed)
    image_class = torch.randint(0, classes, (b, h * w), generator=g)
    class_text = torch.rand(b, classes, t, generator=g) > 0.5
    if empty_class:
        class_text[:, 0] = False
        image_class[:, :: max(1, h * w // 3)] = 0
    tt = torch.rand(b, t, t, generator=g) > 0.4 if text_text else None
    return TextRouting(image_class, class_text, tt)


def reference_mask(h, w, r, t, routing: TextRouting) -> torch.Tensor:
    """(B, 1, L, L) mask built pair by pair from the rule and the routing's tables, not from `dense()`."""
    b, n = routing.image_class.shape
    ys, xs = torch.arange(n) // w, torch.arange(n) % w
    mask = torch.ones(b, 1, t + n, t + n, dtype=torch.bool)
    mask[:, 0, t:, t:] = (ys[:, None] - ys[None]) ** 2 + (xs[:, None] - xs[None]) ** 2 < r * r
    for i in range(b):
        mask[i, 0, t:, :t] = routing.class_text[i][routing.image_class[i]]
        if routing.text_text is not None:
            mask[i, 0, :t, :t] = routing.text_text[i]
    return mask


def _qkv(b, heads, length, d, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, heads, length, d, generator=g) for _ in range(3)]


CASES = [  # (h, w, radius, text_len, head_dim, classes): odd grids, one text token, D not ×16, a covering radius
    (5, 7, 2.5, 3, 32, 3), (1, 9, 2.0, 1, 16, 2), (12, 20, 3.2, 21, 40, 4), (17, 13, 6.0, 37, 64, 2),
    (9, 9, 1.0, 16, 64, 5), (6, 6, 20.0, 5, 32, 3), (11, 3, 4.5, 17, 24, 1),
]
RANDOM_CASES = [(rng.randint(1, 20), rng.randint(1, 20), round(rng.uniform(0.6, 10.0), 2), rng.randint(1, 40),
                 rng.choice([16, 32, 48, 64]), rng.randint(1, 6)) for rng in map(random.Random, range(6))]


@pytest.mark.parametrize("text_text", [True, False])
@pytest.mark.parametrize("backend", ["dense", "tiled", "cpu", "flex", None])
@pytest.mark.parametrize("h,w,r,t,d,classes", CASES + RANDOM_CASES)
def test_every_backend_with_routing_matches_the_masked_reference(backend, h, w, r, t, d, classes, text_text):
    routing = random_routing(2, h, w, t, classes, seed=h * 31 + w + t, text_text=text_text)  # batch items differ
    q, k, v = _qkv(2, 3, t + h * w, d, seed=h * 100 + w)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=reference_mask(h, w, r, t, routing))
    kw = dict(block=16) if backend == "flex" else {}  # small blocks: partial, full and empty ones at test sizes
    if backend is None:
        out = la.local_attention(q, k, v, grid=(h, w), radius=r, text_len=t, routing=routing)
    else:
        out = la.IMPLS[backend](q, k, v, grid=(h, w), radius=r, text_len=t, routing=routing, **kw)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert (out - ref).abs().max() <= TOL


def test_a_class_that_reads_no_text_sees_its_window_only():
    h, w, t = 7, 9, 6
    routing = TextRouting(torch.zeros(1, h * w, dtype=torch.long), torch.zeros(1, 1, t, dtype=torch.bool))
    q, k, v = _qkv(1, 2, t + h * w, 32, seed=9)
    window = la.local_mask((h, w), 2.5, 0)  # image keys only
    ref = F.scaled_dot_product_attention(q[:, :, t:], k[:, :, t:], v[:, :, t:], attn_mask=window)
    for backend in ("dense", "tiled", "cpu", "flex"):
        out = la.local_attention(q, k, v, grid=(h, w), radius=2.5, text_len=t, routing=routing, backend=backend)
        assert torch.isfinite(out).all() and (out[:, :, t:] - ref).abs().max() <= TOL
        assert (out[:, :, :t] - F.scaled_dot_product_attention(q[:, :, :t], k, v)).abs().max() <= TOL


@pytest.mark.parametrize("defines", [("-DVL=4", "-DVB=4"), ("-DVL=8", "-DVB=4"), ("-DVL=16", "-DVB=8"),
                                     ("-DNO_OPENMP",)])
def test_cpu_kernel_routes_exactly_at_every_vector_width(defines, monkeypatch):
    # the lane masks are loaded VL at a time: 4, 8 and 16 lanes, text lengths on and off a chunk boundary
    fn = la.cpu_kernel(defines)
    assert fn is not None
    monkeypatch.setattr(la, "cpu_kernel", lambda: fn)
    for h, w, r, t, d in [(11, 13, 4.2, 5, 32), (9, 20, 8, 37, 64), (5, 7, 2.5, 16, 48), (8, 8, 3, 4, 128)]:
        routing = random_routing(2, h, w, t, 3, seed=h + t)
        q, k, v = _qkv(2, 2, t + h * w, d, seed=h + w)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=reference_mask(h, w, r, t, routing))
        for pair in (True, False):
            out = la.cpu_attention(q, k, v, grid=(h, w), radius=r, text_len=t, routing=routing, pair=pair)
            assert (out - ref).abs().max() <= TOL


def test_a_routing_of_batch_one_serves_every_item_and_gradients_match():
    h, w, t = 8, 7, 5
    routing = random_routing(1, h, w, t, 3, seed=4)
    q, k, v = (x.requires_grad_() for x in _qkv(2, 2, t + h * w, 16, seed=4))
    mask = reference_mask(h, w, 3.5, t, routing)  # (1, 1, L, L) broadcasts over the batch
    grads = []
    for backend in ("dense", "tiled"):
        out = la.local_attention(q, k, v, grid=(h, w), radius=3.5, text_len=t, routing=routing, backend=backend)
        assert (out - F.scaled_dot_product_attention(q, k, v, attn_mask=mask)).abs().max() <= TOL
        grads.append(torch.autograd.grad((out * out.detach().sin()).sum(), (q, k, v)))
    for a, b in zip(*grads):
        assert (a - b).abs().max() <= TOL


def test_flex_block_mask_with_routing_is_exact_per_block():
    """A block the routed BlockMask calls full has all pairs visible; a block it omits has none."""
    (h, w), r, t, block = (13, 21), 3.3, 20, 16
    for text_text in (False, True):
        routing = random_routing(1, h, w, t, 3, seed=2, text_text=text_text)
        bm, perm = la.flex_routed_block_mask((h, w), r, t, block, "cpu", routing)
        dense = reference_mask(h, w, r, t, routing)[0, 0][perm][:, perm]
        nb = -(-dense.shape[0] // block)
        for qb in range(nb):
            listed = set(bm.kv_indices[0, 0, qb, :bm.kv_num_blocks[0, 0, qb]].tolist())
            full = set(bm.full_kv_indices[0, 0, qb, :bm.full_kv_num_blocks[0, 0, qb]].tolist())
            for kb in range(nb):
                pairs = dense[qb * block:(qb + 1) * block, kb * block:(kb + 1) * block]
                if kb in full:
                    assert pairs.all()
                elif kb not in listed:
                    assert not pairs.any()


# ----------------------------------------------------------------------------- the type: dense form and back
def test_dense_and_from_dense_round_trip():
    for text_text in (True, False):
        routing = random_routing(2, 4, 5, 7, 4, seed=3, text_text=text_text)
        mask = routing.dense()
        assert mask.shape == (2, 1, 27, 27) and mask[:, :, :, 7:].all()
        back = TextRouting.from_dense(mask, 7)
        assert torch.equal(back.dense(), mask) and (back.text_text is None) == (not text_text)
        assert back.class_text.shape[1] <= 4 and back.image_class.dtype == torch.int64
        # a mask per head that agrees across heads, and the (L, L) and (B, L, L) forms read the same
        assert torch.equal(TextRouting.from_dense(mask.expand(-1, 3, -1, -1), 7).dense(), mask)
        assert torch.equal(TextRouting.from_dense(mask[:, 0], 7).dense(), mask)
        assert torch.equal(TextRouting.from_dense(mask[0, 0], 7).dense(), mask[:1])
    window = la.local_mask((4, 5), 2.0, 0)
    combined = routing.dense(image_image=window)
    assert torch.equal(combined[:, 0, 7:, 7:], window.expand(2, -1, -1))
    assert torch.equal(combined, reference_mask(4, 5, 2.0, 7, routing))
    unrouted = TextRouting.from_dense(torch.ones(1, 1, 27, 27, dtype=torch.bool), 7)
    assert unrouted.class_text.shape == (1, 1, 7) and unrouted.class_text.all() and unrouted.text_text is None


@pytest.mark.parametrize("make,match", [
    (lambda m: m.float(), "boolean"),
    (lambda m: m[..., :-1], "L, L"),
    (lambda m: m.index_put((torch.tensor(0), torch.tensor(0), torch.tensor(9), torch.tensor(10)),
                           torch.tensor(False)), "image keys"),  # image → image
    (lambda m: m.index_put((torch.tensor(0), torch.tensor(0), torch.tensor(1), torch.tensor(10)),
                           torch.tensor(False)), "image keys"),  # text → image
    (lambda m: torch.cat([m, ~m], dim=1), "heads"),
])
def test_from_dense_refuses_what_is_not_a_text_routing(make, match):
    mask = random_routing(1, 4, 5, 7, 3, seed=1).dense()
    with pytest.raises(ValueError, match=match):
        TextRouting.from_dense(make(mask), 7)


def test_text_len_zero_is_not_routable_and_shapes_are_checked():
    with pytest.raises(ValueError, match="nothing to route"):
        TextRouting.from_dense(torch.ones(1, 1, 20, 20, dtype=torch.bool), 0)
    with pytest.raises(ValueError, match="nothing to route"):
        TextRouting(torch.zeros(1, 20, dtype=torch.long), torch.ones(1, 1, 0, dtype=torch.bool))
    q, k, v = _qkv(1, 1, 20, 16, seed=0)
    routing = random_routing(1, 4, 5, 3, 2, seed=0)
    with pytest.raises(ValueError, match="nothing to route"):
        la.local_attention(q, k, v, grid=(4, 5), radius=2, text_len=0, routing=routing)
    q, k, v = _qkv(1, 1, 23, 16, seed=0)
    with pytest.raises(ValueError, match="routing is for"):
        la.local_attention(q, k, v, grid=(5, 4), radius=2, text_len=3, routing=random_routing(1, 4, 4, 3, 2, 0))
    with pytest.raises(ValueError, match="batch of 3"):
        la.local_attention(q, k, v, grid=(4, 5), radius=2, text_len=3, routing=random_routing(3, 4, 5, 3, 2, 0))
    with pytest.raises(ValueError, match="classes outside"):
        TextRouting(torch.full((1, 20), 2), torch.ones(1, 2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="text_text"):
        TextRouting(torch.zeros(1, 20, dtype=torch.long), torch.ones(1, 2, 3, dtype=torch.bool),
                    torch.ones(1, 3, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="image_class"):
        TextRouting(torch.zeros(1, 20), torch.ones(1, 2, 3, dtype=torch.bool))


def test_clause_routing_builds_the_compact_form_of_its_mask():
    """`text_routing` from owners and regions is exactly the dense routing mask, and has one class per region set."""
    owners = torch.tensor([-1, 0, 0, 1, -1, 2])
    inside = torch.tensor([[True, False, False], [True, True, False], [False, False, False], [False, True, False],
                           [True, False, False], [False, False, True]])
    for separate in (False, True):
        compact = clause.text_routing(owners, inside, separate)
        assert compact.class_text.shape == (1, 5, 6) and compact.image_len == 6
        assert (compact.text_text is not None) == separate
        mask = clause.routing_mask(owners, inside, separate)
        n_text = 6
        expect = torch.ones_like(mask)
        owned = owners >= 0
        expect[n_text:, :n_text] = ~owned[None] | inside[:, owners.clamp(min=0)] | ~inside.any(1)[:, None]
        if separate:
            expect[:n_text, :n_text] = ~(owned[:, None] & owned[None] & (owners[:, None] != owners[None]))
        assert torch.equal(mask, expect)
    both = clause.batch_routing([clause.text_routing(owners, inside, True), None], 6, 6)
    assert torch.equal(both.dense()[0, 0], clause.routing_mask(owners, inside, True))
    assert both.dense()[1].all()  # the unrouted caption reads everything


# ----------------------------------------------------------------------------- the processor on a Flux transformer
@pytest.fixture(scope="module")
def transformer():
    return tiny_flux_pipeline(seed=1).transformer.eval()


def _run(model, routing_or_mask=None, **kw):
    with torch.no_grad():
        extra = {} if routing_or_mask is None else {"joint_attention_kwargs": {"attention_mask": routing_or_mask}}
        return model(**{**kw, **extra})[0]


@pytest.mark.parametrize("backend", [None, "cpu", "tiled", "flex"])
def test_routed_local_processor_matches_diffusers_with_the_combined_mask(transformer, backend):
    rows, cols, t, r = 12, 10, 9, 2.5
    kw = transformer_inputs(transformer, rows, cols, t, batch=2, seed=2)
    routing = random_routing(2, rows, cols, t, 4, seed=5)
    ref = _run(transformer, reference_mask(rows, cols, r, t, routing), **kw)  # stock processors, the mask by hand
    install_local_attention(transformer, radius=r, backend=backend)
    try:
        compact = _run(transformer, routing, **kw)
        dense = _run(transformer, routing.dense(), **kw)  # the dense routing, read back by from_dense
        unrouted = _run(transformer, **kw)
    finally:
        remove_local_attention(transformer)
    assert (compact - ref).abs().max() <= 1e-4 and (dense - ref).abs().max() <= 1e-4
    assert (unrouted - ref).abs().max() > 1e-3  # the routing is real


def test_the_processor_refuses_a_mask_that_is_not_a_text_routing(transformer):
    kw = transformer_inputs(transformer, 4, 4, 3)
    install_local_attention(transformer, radius=2)
    try:
        with pytest.raises(ValueError, match="routes text keys"):
            _run(transformer, torch.eye(19, dtype=torch.bool)[None, None], **kw)
        with pytest.raises(ValueError, match="TextRouting or a bool tensor"):
            _run(transformer, [[True]], **kw)
    finally:
        remove_local_attention(transformer)


# ----------------------------------------------------------------------------- a routed pipeline with local attention
CAPTION = "[TWO-PANEL] the same circle in two colours; [LEFT] a red circle on the left, [RIGHT] a blue circle on top."


def _spy(pipe):
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, kw: seen.append((kw.get("joint_attention_kwargs") or {}).get("attention_mask")),
        with_kwargs=True)
    return seen, handle


def test_a_routed_pipeline_with_local_attention_gets_the_compact_routing():
    pipe = tiny_flux_pipeline(text_len=48)
    state = clause.enable_clause_routing(pipe)
    kw = dict(height=32, width=64, num_inference_steps=2, output_type="pt", max_sequence_length=48)
    seen, handle = _spy(pipe)
    dense_routed = pipe(CAPTION, generator=torch.Generator().manual_seed(0), **kw).images
    mask = seen[0]
    assert isinstance(mask, torch.Tensor) and not mask.all()
    install_local_attention(pipe.transformer, radius=100)  # covers the grid: local = full attention, routed alike
    seen.clear()
    covering = pipe(CAPTION, generator=torch.Generator().manual_seed(0), **kw).images
    assert isinstance(seen[0], TextRouting) and torch.equal(seen[0].dense(), mask)  # the same routing, compact
    assert (covering - dense_routed).abs().max() < 1e-4
    calls = state.routed_calls
    install_local_attention(pipe.transformer, radius=2)
    seen.clear()
    local_routed = pipe(CAPTION, generator=torch.Generator().manual_seed(0), **kw).images
    assert isinstance(seen[0], TextRouting) and state.routed_calls > calls
    clause.disable_clause_routing(pipe)
    local_unrouted = pipe(CAPTION, generator=torch.Generator().manual_seed(0), **kw).images
    assert not torch.equal(local_routed, local_unrouted)  # the routing reaches the windows
    # local attention on some layers only: the stock ones need the dense mask, the local ones read it back
    handle.remove()
    clause.enable_clause_routing(pipe)
    seen, handle = _spy(pipe)  # after the new routing hook, so it sees its mask
    install_local_attention(pipe.transformer, radius=2, layers=list(pipe.transformer.attn_processors)[:1])
    some = pipe(CAPTION, generator=torch.Generator().manual_seed(0), **kw).images
    assert isinstance(seen[0], torch.Tensor) and seen[0].dtype == torch.bool and torch.isfinite(some).all()
    handle.remove()
    remove_local_attention(pipe.transformer)
