"""The caption decoder: a randomly initialised GPT-2-style transformer with cross-attention.

Its memory (docs/DESIGN.md section 1) is the frame features projected to the decoder width plus
``num_latent_tokens`` tokens projected from the anchor-aligned latent (the VAE's ``mu`` at
inference, a sample ``z`` in training), so the latent conditions every generated token. A
decoder without a latent (the baseline) gets as many learned constant tokens instead, unless
``constant_tokens_without_latent`` is off, so both have the same memory size.
``transformers``' ``generate`` gives KV-cached greedy, beam and nucleus decoding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from calmcap.config import DecodeOptions, DecoderConfig
from calmcap.tokenizer import BOS_ID, EOS_ID, PAD_ID


class CaptionDecoder(nn.Module):
    """Memory builder + ``GPT2LMHeadModel(add_cross_attention=True)``."""

    def __init__(self, config: DecoderConfig, frame_dim: int, max_frames: int, latent_dim: int) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.config = config
        self.latent_dim = latent_dim
        has_tokens = latent_dim > 0 or config.constant_tokens_without_latent
        self.num_latent_tokens = config.num_latent_tokens if has_tokens else 0
        width = config.width
        self.frame_proj = nn.Linear(frame_dim, width)
        if self.num_latent_tokens and latent_dim > 0:
            self.latent_proj = nn.Linear(latent_dim, width * self.num_latent_tokens)
        elif self.num_latent_tokens:  # the baseline's constant tokens (the memory norm rescales them)
            self.constant_tokens = nn.Parameter(torch.empty(self.num_latent_tokens, width).normal_(std=0.02))
        # Learned positions for memory slots: frame order, then the latent tokens.
        self.memory_pos = nn.Parameter(torch.zeros(max_frames + self.num_latent_tokens, width))
        nn.init.normal_(self.memory_pos, std=0.01)
        self.memory_norm = nn.LayerNorm(width)
        gpt_config = GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.max_positions,
            n_embd=width,
            n_layer=config.num_layers,
            n_head=config.num_heads,
            add_cross_attention=True,
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            tie_word_embeddings=True,
            # GPT-2's tanh-approximated GELU as one fused kernel: the same function as its default
            # "gelu_new" (which spells it out in ~8 element-wise ops), a measurably cheaper step on CPU.
            activation_function="gelu_pytorch_tanh",
        )
        self.gpt = GPT2LMHeadModel(gpt_config)

    def build_memory(
        self,
        frame_features: torch.Tensor,
        frame_mask: torch.Tensor,
        latent: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """frame_features [B, T, D], frame_mask [B, T], latent [B, d] -> memory [B, M, W], mask [B, M]."""
        batch, num_frames = frame_features.shape[:2]
        tokens = [self.frame_proj(frame_features)]
        masks = [frame_mask.long()]
        if self.num_latent_tokens and self.latent_dim > 0:
            if latent is None:
                raise ValueError("this decoder was built with latent tokens; pass the latent")
            tokens.append(self.latent_proj(latent).view(batch, self.num_latent_tokens, -1))
        elif self.num_latent_tokens:
            tokens.append(self.constant_tokens.to(tokens[0].dtype).expand(batch, -1, -1))
        if self.num_latent_tokens:
            masks.append(torch.ones(batch, self.num_latent_tokens, dtype=torch.long, device=frame_mask.device))
        memory = torch.cat(tokens, dim=1)
        latent_positions = self.memory_pos[self.memory_pos.shape[0] - self.num_latent_tokens :]
        positions = torch.cat([self.memory_pos[:num_frames], latent_positions])
        memory = self.memory_norm(memory + positions.to(memory.dtype))
        return memory, torch.cat(masks, dim=1)

    def forward(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Teacher-forced logits [B, L, V] for input_ids [B, L] (bos ... eos pad ...)."""
        out = self.gpt(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            use_cache=False,
        )
        return out.logits

    @torch.no_grad()
    def generate(
        self,
        memory: torch.Tensor,
        memory_mask: torch.Tensor,
        options: DecodeOptions | None = None,
        *,
        use_cache: bool = True,
        generator_kwargs: dict[str, Any] | None = None,
        **settings: Any,
    ) -> dict[str, torch.Tensor]:
        """Decode captions from memory [B, M, W] and memory_mask [B, M].

        ``options`` (default :class:`DecodeOptions`'s defaults), with any of its fields
        overridden by keyword (``num_beams=1``), says how; the settings are checked first.
        ``max_length``/``min_length`` count new tokens (bos excluded).

        Returns ``sequences`` [B * num_return_sequences, L] (without the leading bos) and
        ``scores`` [B * num_return_sequences] (length-penalised log-probability for beam
        search, mean token log-probability otherwise).
        """
        unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(DecodeOptions)})
        if unknown:
            raise TypeError(f"unknown decoding setting(s) {unknown}; see calmcap.config.DecodeOptions")
        options = dataclasses.replace(options or DecodeOptions(), **settings).check()
        batch = memory.shape[0]
        max_new = min(options.max_length, self.config.max_positions - 1)
        input_ids = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=memory.device)
        kwargs: dict[str, Any] = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            encoder_hidden_states=memory,
            encoder_attention_mask=memory_mask,
            max_new_tokens=max_new,
            min_new_tokens=min(options.min_length, max_new),
            num_beams=options.num_beams,
            num_return_sequences=options.num_return_sequences,
            length_penalty=options.length_penalty,
            no_repeat_ngram_size=options.no_repeat_ngram_size,
            do_sample=options.do_sample,
            use_cache=use_cache,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            # Never emit bos or pad mid-caption (an untrained decoder otherwise can).
            suppress_tokens=[BOS_ID, PAD_ID],
            return_dict_in_generate=True,
            output_scores=True,
        )
        if options.do_sample:
            kwargs.update(top_p=options.top_p, temperature=options.temperature, top_k=0)
        kwargs.update(generator_kwargs or {})
        out = self.gpt.generate(**kwargs)
        sequences = out.sequences[:, 1:]
        if getattr(out, "sequences_scores", None) is not None:
            scores = out.sequences_scores
        else:
            transition = self.gpt.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
            valid = sequences[:, : transition.shape[1]] != PAD_ID
            scores = (transition.masked_fill(~valid, 0).sum(1) / valid.sum(1).clamp(min=1)).float()
        return {"sequences": sequences, "scores": scores}
