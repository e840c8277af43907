"""Tiny random FLUX pipelines built from configs, offline: for tests and for developing tools before weights land.

Same classes as FLUX.1 and the builtin model (FluxPipeline, FluxTransformer2DModel, AutoencoderKL), a few
thousand parameters each. The tokenizer is MiniLM's, read from site-packages; the text encoders are random BERTs.
"""
from __future__ import annotations

import torch

from ditflow.pipelines.loading import PipelineInfo


def tiny_flux_pipeline(seed: int = 0, text_len: int = 16, guidance_embeds: bool = False):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ditflow.pipelines.loading import minilm_dir

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(minilm_dir(), model_max_length=text_len)
    bert = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=37, max_position_embeddings=512)
    enc = BertModel(bert).eval()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=4,
                        block_out_channels=(4, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, sample_size=32, shift_factor=0.0,
                        scaling_factor=1.0)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=enc, tokenizer=tok,
                        text_encoder_2=enc, tokenizer_2=tok, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    pipe.ditflow_info = PipelineInfo(name="tiny", text_len=text_len, native_area=32 * 32, panel=32,
                                     default_steps=4, default_cfg=1.0, guidance_embeds=guidance_embeds,
                                     world="shapes")
    return pipe
