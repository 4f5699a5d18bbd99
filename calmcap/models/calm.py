"""The composed CALM model: CLIP towers, temporal fusion, anchors, VAE, retrieval head, decoder.

The small API follows open_clip: ``encode_video`` and ``encode_text`` return L2-normalised
features, ``forward(batch)`` returns a dict of everything the losses need, and ``generate``
captions. Losses and distributed gathers live outside the model (``calmcap.losses``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from calmcap.config import ModelConfig
from calmcap.models.anchors import AnchorBank
from calmcap.models.decoder import CaptionDecoder
from calmcap.models.encoders import TemporalFusion, build_clip, clip_arch_config, clip_text_tokenizer, masked_mean
from calmcap.models.retrieval import RetrievalHead
from calmcap.models.vae import CrossModalVAE
from calmcap.tokenizer import CaptionTokenizer

logger = logging.getLogger(__name__)


class CALMModel(nn.Module):
    """One model, two heads: retrieval (``V``, ``S``) and captioning (decoder over frames + latent).

    Build a fresh model with :meth:`create`, a trained one with :meth:`from_pretrained`.
    ``labels`` are the anchor labels (``[]`` when the anchor branch is off); ``tokenizer`` is
    the caption tokenizer (its vocabulary size must match ``config.decoder.vocab_size``).
    """

    def __init__(
        self,
        config: ModelConfig,
        labels: Sequence[str],
        tokenizer: CaptionTokenizer | None = None,
        clip_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.labels = list(labels)
        self.tokenizer = tokenizer
        if tokenizer is not None and tokenizer.vocab_size != config.decoder.vocab_size:
            raise ValueError(
                f"tokenizer has {tokenizer.vocab_size} pieces but decoder.vocab_size={config.decoder.vocab_size}"
            )
        if config.use_anchors and not self.labels:
            raise ValueError("the anchor branch is on but no anchor labels were given")
        self.clip = clip_model if clip_model is not None else build_clip(config.clip, config.image_size)
        # open_clip's own temperature is unused: the retrieval head owns ours (clamped at 100).
        for name in ("logit_scale", "logit_bias"):
            if isinstance(getattr(self.clip, name, None), nn.Parameter):
                getattr(self.clip, name).requires_grad_(False)
        self.embed_dim = int(clip_arch_config(config.clip.arch)["embed_dim"])
        self.fusion = TemporalFusion(config.fusion, self.embed_dim, config.num_frames)
        self.retrieval = RetrievalHead(config.retrieval)

        variant = config.alignment.variant if config.use_anchors else "none"
        self.variant = variant
        num_anchors = len(self.labels) if variant != "none" else 0
        self.anchor_bank = AnchorBank(config.anchors, num_anchors, self.embed_dim) if num_anchors else None
        self.vae = CrossModalVAE(config.alignment, num_anchors) if variant == "vae" else None
        # What conditions the decoder besides the frames: the VAE latent (CALM), the video's
        # anchor distribution itself for the direct-alignment ablations, nothing for the baseline.
        latent_dim = {"vae": config.alignment.latent_dim, "none": 0}.get(variant, num_anchors)
        self.decoder = CaptionDecoder(config.decoder, self.embed_dim, config.num_frames, latent_dim)
        self._clip_tokenizer = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def create(
        cls,
        config: ModelConfig,
        tokenizer: CaptionTokenizer | None = None,
        labels: Sequence[str] | None = None,
    ) -> CALMModel:
        """A new model: CLIP weights per ``config.clip.pretrained``, anchor prompts encoded once.

        ``labels`` default to ``config.anchors``' label set; ``tokenizer`` sets the decoder's
        vocabulary size when given.
        """
        from calmcap.config import from_dict, to_dict
        from calmcap.labels import load_labels

        if tokenizer is not None and tokenizer.vocab_size != config.decoder.vocab_size:
            data = to_dict(config)
            data["decoder"]["vocab_size"] = tokenizer.vocab_size
            config = from_dict(ModelConfig, data)
        if labels is None:
            labels = load_labels(config.anchors.label_set, config.anchors.num_anchors) if config.use_anchors else []
        model = cls(config, labels, tokenizer)
        model.refresh_anchor_prompts()
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> CALMModel:
        """Load a checkpoint directory (``config.json`` + ``model.safetensors`` + tokenizer + anchors)."""
        from calmcap.checkpoint import load_pretrained

        def build(config: ModelConfig, labels: Sequence[str], tokenizer: CaptionTokenizer) -> CALMModel:
            return cls(config, labels, tokenizer, clip_model=build_clip(config.clip, config.image_size, meta=True))

        return load_pretrained(path, build, device=device)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write a checkpoint directory that rebuilds this model exactly."""
        from calmcap.checkpoint import save_pretrained

        return save_pretrained(self, path)

    def refresh_anchor_prompts(self) -> None:
        """Encode the anchor prompts with the current text tower into the fixed buffer ``p_k``."""
        if self.anchor_bank is None:
            return
        was_training = self.training
        self.eval()
        self.anchor_bank.set_prompt_embeds(self.labels, lambda texts: self.clip.encode_text(self.tokenize_text(texts)))
        self.train(was_training)

    # ------------------------------------------------------------------ encoders

    def tokenize_text(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP tokens [B, context_length] for the text tower."""
        if self._clip_tokenizer is None:
            self._clip_tokenizer = clip_text_tokenizer(self.config.clip.arch)
        return self._clip_tokenizer(list(texts)).to(self.retrieval.log_logit_scale.device)

    def encode_frames(self, video: torch.Tensor) -> torch.Tensor:
        """Per-frame CLIP image features: video [B, T, 3, H, W] float -> [B, T, D] (not normalised)."""
        batch, num_frames = video.shape[:2]
        # channels-last images: 1.4x faster convolutions on CPU for calmcap-tiny's ResNet tower
        # (measured, issue #11); the same values either way.
        images = video.flatten(0, 1).contiguous(memory_format=torch.channels_last)
        features = self.clip.encode_image(images)
        return features.view(batch, num_frames, -1)

    def fuse(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised video vector ``V`` [B, D] from frame features [B, T, D]."""
        return F.normalize(self.fusion(frame_features, frame_mask), dim=-1)

    def encode_video(self, video: torch.Tensor, video_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised video features: video [B, T, 3, H, W] (mask [B, T]) -> [B, D]."""
        return self.fuse(self.encode_frames(video), video_mask)

    def encode_text_raw(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """The projected end-of-text token of the text tower: tokens [B, L] -> [B, D]."""
        return self.clip.encode_text(text_tokens)

    def encode_text(self, text: torch.Tensor | Sequence[str]) -> torch.Tensor:
        """Normalised text features: CLIP tokens [B, L] or a list of strings -> [B, D]."""
        if not isinstance(text, torch.Tensor):
            text = self.tokenize_text(text)
        return F.normalize(self.encode_text_raw(text), dim=-1)

    # ------------------------------------------------------------------ anchor branch

    def video_distribution(self, frame_features: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """``V_p = softmax(tau * cos(mean_t(frame_t), a))``: [B, T, D] -> [B, K]."""
        return self.anchor_bank(masked_mean(frame_features, frame_mask))

    def text_distribution(self, text_features: torch.Tensor) -> torch.Tensor:
        """``S_p = softmax(tau * cos(S, a))``: [B, D] -> [B, K]."""
        return self.anchor_bank(text_features)

    def _latent(self, frame_features: torch.Tensor, frame_mask: torch.Tensor, sample: bool) -> dict[str, torch.Tensor]:
        """The anchor branch on the video side: ``video_dist`` and, with the VAE, its outputs."""
        if self.anchor_bank is None:
            return {}
        out = {"video_dist": self.video_distribution(frame_features, frame_mask)}
        if self.vae is not None:
            out.update(self.vae(out["video_dist"], sample=sample))
            out["latent"] = out["z"]
        else:
            out["latent"] = out["video_dist"]
        return out

    # ------------------------------------------------------------------ forward

    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Everything the losses need for one batch.

        batch: ``video`` [B, T, 3, H, W] float or ``frame_features`` [B, T, D] (cached, frozen
        image tower); ``video_mask`` [B, T] bool (optional); ``text_tokens`` [B, L] CLIP tokens
        (optional: retrieval + text distribution); ``caption_ids`` / ``caption_mask`` [B * R, Lc]
        (optional: captioning; ``caption_repeats`` = R captions per video, grouped by video);
        ``sample_latent`` (bool, default: training) draws the VAE latent instead of using mu.

        Returns ``video_embeds``, ``text_embeds`` [B, D] (normalised), ``logit_scale``;
        ``video_dist``, ``text_dist`` [B, K] and ``text_logprob_hat``, ``mu``, ``logvar`` (VAE)
        when the anchor branch is on; ``caption_logits`` [B, Lc-1, V], ``caption_targets``
        [B, Lc-1] (pad = -100) when captions are given.
        """
        if "frame_features" in batch:
            frame_features = batch["frame_features"]
        else:
            frame_features = self.encode_frames(batch["video"])
        frame_mask = batch.get("video_mask")
        if frame_mask is None:
            frame_mask = torch.ones(frame_features.shape[:2], dtype=torch.bool, device=frame_features.device)
        frame_mask = frame_mask.bool()
        out: dict[str, torch.Tensor] = {
            "video_embeds": self.fuse(frame_features, frame_mask),
            "logit_scale": self.retrieval.logit_scale,
        }
        branch = self._latent(frame_features, frame_mask, sample=batch.get("sample_latent", self.training))
        out.update({k: v for k, v in branch.items() if k != "latent"})
        if "text_tokens" in batch:
            text_features = self.encode_text_raw(batch["text_tokens"])
            out["text_embeds"] = F.normalize(text_features, dim=-1)
            if self.anchor_bank is not None:
                text_dist = self.text_distribution(text_features)
                out["text_dist"] = text_dist.detach() if self.config.alignment.detach_text_dist else text_dist
        if "caption_ids" in batch:
            ids, mask = batch["caption_ids"], batch["caption_mask"]
            memory, memory_mask = self.decoder.build_memory(frame_features, frame_mask, branch.get("latent"))
            repeats = int(batch.get("caption_repeats", 1))
            if repeats > 1:  # several captions per video (self-critical samples), grouped by video
                memory = memory.repeat_interleave(repeats, dim=0)
                memory_mask = memory_mask.repeat_interleave(repeats, dim=0)
            logits = self.decoder(memory, memory_mask, ids[:, :-1], mask[:, :-1])
            out["caption_logits"] = logits
            out["caption_targets"] = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        return out

    # ------------------------------------------------------------------ captioning

    @torch.no_grad()
    def generate(
        self,
        video: torch.Tensor | None = None,
        video_mask: torch.Tensor | None = None,
        frame_features: torch.Tensor | None = None,
        **decode_kwargs: Any,
    ) -> dict[str, Any]:
        """Caption a batch: video [B, T, 3, H, W] or frame_features [B, T, D].

        Returns ``sequences`` [N, L] token ids, ``scores`` [N] and, with a tokenizer,
        ``captions`` (N = B * num_return_sequences, grouped by video). Keyword arguments go to
        :meth:`CaptionDecoder.generate` (num_beams, max_length, min_length, length_penalty,
        no_repeat_ngram_size, do_sample, top_p, temperature, num_return_sequences, use_cache).
        """
        if frame_features is None:
            if video is None:
                raise ValueError("pass video or frame_features")
            frame_features = self.encode_frames(video)
        if video_mask is None:
            video_mask = torch.ones(frame_features.shape[:2], dtype=torch.bool, device=frame_features.device)
        branch = self._latent(frame_features, video_mask.bool(), sample=False)
        memory, memory_mask = self.decoder.build_memory(frame_features, video_mask.bool(), branch.get("latent"))
        out: dict[str, Any] = self.decoder.generate(memory, memory_mask, **decode_kwargs)
        if self.tokenizer is not None:
            out["captions"] = [self.tokenizer.decode(seq.tolist()) for seq in out["sequences"]]
        return out

    # ------------------------------------------------------------------ introspection

    def anchor_branch_parameters(self) -> int:
        """Trainable parameters the anchor branch adds (positional offsets, tau, VAE)."""
        modules = [m for m in (self.anchor_bank, self.vae) if m is not None]
        return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
