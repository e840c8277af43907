"""The keyword arguments of one call of a (tiny) Flux transformer on a rows × cols token grid, shared by the kernel
tests that compare processors on the same call."""
import torch


def transformer_inputs(transformer, rows: int, cols: int, text_len: int = 6, *, batch: int = 1, seed: int = 0,
                       mask=None) -> dict:
    from diffusers import FluxPipeline

    g = torch.Generator().manual_seed(seed)
    cfg = transformer.config
    return dict(hidden_states=torch.randn(batch, rows * cols, cfg.in_channels, generator=g),
                encoder_hidden_states=torch.randn(batch, text_len, cfg.joint_attention_dim, generator=g),
                pooled_projections=torch.randn(batch, cfg.pooled_projection_dim, generator=g),
                timestep=torch.tensor([0.7] * batch),
                img_ids=FluxPipeline._prepare_latent_image_ids(1, rows, cols, "cpu", torch.float32),
                txt_ids=torch.zeros(text_len, 3), return_dict=False,
                joint_attention_kwargs=None if mask is None else {"attention_mask": mask})
