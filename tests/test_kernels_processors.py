"""The local-attention processor on real (tiny, random) diffusers Flux transformers and pipelines."""
from __future__ import annotations

import pytest
import torch

from ditflow.kernels import local_attention as la
from ditflow.kernels.processors import grid_of, install_local_attention, installed, remove_local_attention
from ditflow.pipelines.tiny import tiny_flux_pipeline
from flux_inputs import transformer_inputs


@pytest.fixture(scope="module")
def transformer():
    return tiny_flux_pipeline(seed=1).transformer.eval()


def _run(model, **kw):
    with torch.no_grad():
        return model(**kw)[0]


def test_covering_radius_reproduces_diffusers_processor(transformer):
    """Oracle: with a window that covers the grid, local attention is diffusers' own full attention."""
    kw = transformer_inputs(transformer, 6, 9)
    ref = _run(transformer, **kw)
    install_local_attention(transformer, radius=20)
    try:
        out = _run(transformer, **kw)
    finally:
        remove_local_attention(transformer)
    assert (out - ref).abs().max() < 1e-5


def test_small_radius_changes_output_and_matches_dense_backend(transformer):
    kw = transformer_inputs(transformer, 12, 10, seed=2)
    full = _run(transformer, **kw)
    install_local_attention(transformer, radius=2.5, backend="dense")
    dense = _run(transformer, **kw)
    install_local_attention(transformer, radius=2.5)  # re-install replaces: auto backend
    auto = _run(transformer, **kw)
    remove_local_attention(transformer)
    assert (auto - dense).abs().max() < 1e-4
    assert (dense - full).abs().max() > 1e-3  # the window is real: distant tokens no longer mix
    assert (_run(transformer, **kw) - full).abs().max() == 0  # removal restores the original processors
    assert installed(transformer) is None


def test_any_resolution_without_rebuilding(transformer):
    handle = install_local_attention(transformer, radius=3)
    try:
        for rows, cols in [(4, 4), (8, 16), (16, 8), (5, 7)]:
            out = _run(transformer, **transformer_inputs(transformer, rows, cols))
            assert out.shape == (1, rows * cols, transformer.config.in_channels) and torch.isfinite(out).all()
            assert handle.geometry.grid == (rows, cols)
    finally:
        remove_local_attention(transformer)


def test_layer_subset_and_unknown_layer(transformer):
    names = list(transformer.attn_processors)
    handle = install_local_attention(transformer, radius=2, layers=names[:1])
    try:
        kinds = {type(p).__name__ for p in transformer.attn_processors.values()}
        assert kinds == {"LocalFluxAttnProcessor", "FluxAttnProcessor"} and handle.layers == tuple(names[:1])
    finally:
        remove_local_attention(transformer)
    with pytest.raises(ValueError, match="no attention layer"):
        install_local_attention(transformer, radius=2, layers=["nope.processor"])


def test_non_grid_ids_raise(transformer):
    kw = transformer_inputs(transformer, 4, 4)
    kw["img_ids"] = kw["img_ids"].flip(0)  # not row-major
    install_local_attention(transformer, radius=2)
    try:
        with pytest.raises(ValueError, match="row-major"):
            _run(transformer, **kw)
    finally:
        remove_local_attention(transformer)
    assert grid_of(transformer_inputs(transformer, 3, 5)["img_ids"]) == (3, 5)


def test_gradients_reach_the_projections():
    model = tiny_flux_pipeline(seed=2).transformer.train()
    install_local_attention(model, radius=2)
    kw = transformer_inputs(model, 8, 8)
    model(**kw)[0].square().mean().backward()
    grads = [p.grad for n, p in model.named_parameters() if n.endswith("attn.to_q.weight")]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_pipeline_generates_with_local_attention():
    """A real FluxPipeline call at two canvas sizes, with the window on, then off again."""
    pipe = tiny_flux_pipeline(seed=3)
    gen = lambda h, w: pipe("a red circle", height=h, width=w, num_inference_steps=2, output_type="np",  # noqa: E731
                            generator=torch.Generator().manual_seed(0)).images[0]
    full = gen(64, 64)
    install_local_attention(pipe.transformer, radius=2)
    local = gen(64, 64)
    wide = gen(32, 64)
    remove_local_attention(pipe.transformer)
    assert local.shape == full.shape and wide.shape == (32, 64, 3)
    assert abs(local - full).max() > 0 and (gen(64, 64) == full).all()
    assert la.covers_grid((16, 16), 2) is False
