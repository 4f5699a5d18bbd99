"""CLIP towers from open_clip, and temporal fusion of frame features.

The towers come from open_clip by architecture name (``ViT-B-32``); calmcap's own small
architectures (``calmcap/clip_configs/*.json``) are registered with open_clip on first use.
Weights come from an open_clip pretrained tag (downloaded and cached by open_clip when online)
or a local weights file; ``None`` means random initialisation.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from calmcap.config import CLIP_CONFIG_DIR, PRETRAINED_DIR, ClipConfig, FusionConfig
from calmcap.errors import ConfigError

logger = logging.getLogger(__name__)

_REGISTERED = False


def _drop_random_init_warning(record: logging.LogRecord) -> bool:
    """A root-logger filter: open_clip's random-init warning, for a build a checkpoint fills in."""
    return "No pretrained weights loaded" not in record.getMessage()


def _open_clip():
    """Import open_clip (slow: ~3-5 s) and register calmcap's architectures and tags once."""
    global _REGISTERED
    import open_clip

    if not _REGISTERED:
        open_clip.add_model_config(CLIP_CONFIG_DIR)
        _register_shipped_tags()
        _REGISTERED = True
    return open_clip


def shipped_tags() -> dict[str, dict[str, dict]]:
    """The pretrained tags shipped in ``calmcap/pretrained/tags.json``: ``{arch: {tag: entry}}``.

    Each entry names its weights ``file`` (relative to that folder), its ``sha256`` and how it
    was made (``command``), as BENCHMARKS.md records them.
    """
    path = PRETRAINED_DIR / "tags.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text(encoding="utf-8"))


def _register_shipped_tags() -> None:
    """Make calmcap's shipped weights open_clip pretrained tags (``calmcap-tiny-clip`` / ``synth``).

    open_clip resolves a tag through its table of pretrained configs; an entry with a ``file``
    key points at local weights, so ``create_model(arch, pretrained=tag)`` loads ours by the very
    path that loads ``openai`` for ViT-B/32 (no special case in calmcap). open_clip has no public
    call for adding an entry, hence the write into its table.
    """
    from open_clip import pretrained as registry

    for arch, tags in shipped_tags().items():
        for tag, entry in tags.items():
            cfg = registry._pcfg(file=str(PRETRAINED_DIR / entry["file"]),
                                 **{k: v for k, v in entry.items() if k in ("mean", "std", "interpolation")})
            registry._PRETRAINED.setdefault(arch, {})[tag] = cfg


def save_clip_weights(clip: nn.Module, path: str | Path, logit_scale: torch.Tensor | float | None = None,
                      dtype: torch.dtype = torch.float16) -> str:
    """Write an open_clip ``CLIP`` model's weights as an open_clip-format safetensors file.

    ``logit_scale`` (the retrieval head's learned scale, not log) replaces open_clip's own,
    unused in calmcap, so the file is a complete CLIP model for zero-shot use. Floating-point
    tensors are stored as ``dtype``. The file is written atomically; returns its sha256.
    """
    import hashlib
    import math
    import os

    from safetensors.torch import save_file

    state = {name: tensor.detach().to("cpu") for name, tensor in clip.state_dict().items()}
    if logit_scale is not None and "logit_scale" in state:
        value = float(logit_scale)
        state["logit_scale"] = torch.full_like(state["logit_scale"], math.log(value))
    state = {name: (t.to(dtype) if t.is_floating_point() else t).contiguous() for name, t in state.items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "producer": "calmcap"})
    os.replace(tmp, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clip_arch_config(arch: str) -> dict:
    """The open_clip architecture dict (embed_dim, vision_cfg, text_cfg) of ``arch``."""
    open_clip = _open_clip()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ConfigError(f"clip.arch: unknown open_clip architecture {arch!r}")
    return cfg


def build_clip(config: ClipConfig, image_size: int, meta: bool = False) -> nn.Module:
    """Build the open_clip ``CLIP`` model of ``config``.

    ``meta=True`` builds on the meta device without weights (~0.07 s instead of ~1.5 s for
    ViT-B/32): the caller loads a checkpoint with ``assign=True`` (see ``calmcap.checkpoint``).
    Otherwise the weights named by ``config.pretrained`` are loaded (tag or local file).
    """
    open_clip = _open_clip()
    arch_cfg = clip_arch_config(config.arch)
    if arch_cfg["vision_cfg"].get("image_size") != image_size:
        raise ConfigError(
            f"image_size={image_size} but open_clip architecture {config.arch!r} expects "
            f"{arch_cfg['vision_cfg'].get('image_size')}"
        )
    if meta:
        # The context makes construction itself skip allocation and init; device="meta" keeps
        # open_clip from moving the result to the CPU. The caller fills in weights, so open_clip's
        # "No pretrained weights loaded ... initialized randomly" would be false here: it is dropped.
        root = logging.getLogger()
        root.addFilter(_drop_random_init_warning)
        try:
            with torch.device("meta"):
                return open_clip.create_model(config.arch, pretrained=None, device="meta")
        finally:
            root.removeFilter(_drop_random_init_warning)
    pretrained = config.pretrained
    if pretrained is None:
        return open_clip.create_model(config.arch, pretrained=None)
    local = Path(pretrained).expanduser()
    if local.suffix or local.exists() or "/" in pretrained:
        if not local.is_file():
            raise ConfigError(f"clip.pretrained: weights file {local} not found")
        if local.suffix == ".safetensors":
            return _clip_from_safetensors(config.arch, local)
        return open_clip.create_model(config.arch, pretrained=str(local), weights_only=True)
    tags = open_clip.list_pretrained_tags_by_model(config.arch)
    if pretrained not in tags:
        raise ConfigError(f"clip.pretrained: {config.arch!r} has no pretrained tag {pretrained!r}; "
                          f"known: {', '.join(tags)}")
    try:
        return open_clip.create_model(config.arch, pretrained=pretrained, weights_only=True)
    except RuntimeError as error:
        if "download" not in str(error).lower() and "hub" not in str(error).lower():
            raise
        raise ConfigError(
            f"open_clip weights {config.arch}/{pretrained} are not cached and cannot be downloaded "
            f"(offline?). Run once online to cache them, or download the weights file and set "
            f"clip.pretrained=/path/to/weights (.bin/.pt/.safetensors), or clip.pretrained=null for random init"
        ) from None


def _clip_from_safetensors(arch: str, path: Path) -> nn.Module:
    from safetensors.torch import load_file

    model = _open_clip().create_model(arch, pretrained=None)
    state = {k.removeprefix("module."): v for k, v in load_file(str(path)).items()}
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        raise ConfigError(
            f"clip.pretrained: {path} lacks {len(result.missing_keys)} weights of {arch} "
            f"(first: {result.missing_keys[0]})"
        )
    return model


@functools.cache
def clip_text_tokenizer(arch: str):
    """open_clip's tokenizer for ``arch`` (texts -> LongTensor [B, context_length]); built once."""
    return _open_clip().get_tokenizer(arch)


class TemporalFusion(nn.Module):
    """Frame features [B, T, D] (+ mask [B, T]) -> one video vector [B, D].

    ``mean``: masked mean over frames. ``transformer``: a small temporal transformer with
    learned frame positions, added residually before the masked mean, so the pooled vector
    can tell left from right and growing from shrinking (docs/DESIGN.md section 1, step 1).
    """

    def __init__(self, config: FusionConfig, embed_dim: int, max_frames: int) -> None:
        super().__init__()
        self.type = config.type
        if self.type == "transformer":
            if embed_dim % config.num_heads:
                raise ConfigError(f"fusion.num_heads ({config.num_heads}) must divide the embedding width {embed_dim}")
            self.frame_pos = nn.Parameter(torch.zeros(max_frames, embed_dim))
            nn.init.normal_(self.frame_pos, std=0.01)
            layer = nn.TransformerEncoderLayer(
                embed_dim,
                config.num_heads,
                dim_feedforward=4 * embed_dim,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.transformer = nn.TransformerEncoder(layer, config.num_layers, enable_nested_tensor=False)

    def forward(self, frame_features: torch.Tensor, frame_mask: torch.Tensor | None = None) -> torch.Tensor:
        if frame_mask is None:
            frame_mask = torch.ones(frame_features.shape[:2], dtype=torch.bool, device=frame_features.device)
        frame_mask = frame_mask.bool()
        x = frame_features
        if self.type == "transformer":
            num_frames = x.shape[1]
            if num_frames > self.frame_pos.shape[0]:
                raise ValueError(f"{num_frames} frames but the fusion module was built for {self.frame_pos.shape[0]}")
            h = x + self.frame_pos[:num_frames].to(x.dtype)
            x = x + self.transformer(h, src_key_padding_mask=~frame_mask)
        return masked_mean(x, frame_mask)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x [B, T, D] over the frames where mask [B, T] is true."""
    weights = mask.to(x.dtype).unsqueeze(-1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
