"""MiniLM as both FLUX text encoders of the builtin pipeline.

FluxPipeline calls its text encoders with token ids alone (T5 and CLIP need no mask). A BERT called that way lets
every real token attend to the padding: with 80-token padding a caption's states moved by ~55% (relative norm),
as far as changing "a red circle on the left" into "a blue square on the right" moved them, so the condition was
mostly padding. `MaskedMiniLM` reads the mask from the ids instead, and pools the way MiniLM was trained to embed
sentences (the masked mean of the last states; BERT's CLS pooler was never tuned on this checkpoint).

Exports record the encoding in ditflow.json (`text_encoding`); folders without the key were trained on the plain
unmasked BertModel and load with it (`loading.load_minilm` picks the class).
"""
from __future__ import annotations

import torch
from transformers import BertModel


class MaskedMiniLM(BertModel):
    """A BertModel whose missing attention mask comes from the padding in `input_ids`, and whose `pooler_output` is
    the masked mean of the last hidden states."""

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None, **kwargs):
        if attention_mask is None and input_ids is not None:
            attention_mask = (input_ids != self.config.pad_token_id).long()
        kwargs["return_dict"] = True
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        if attention_mask is not None:
            m = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            out.pooler_output = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1)
        else:  # embeddings passed directly: every position is real
            out.pooler_output = out.last_hidden_state.mean(1)
        return out
