"""Explaining a video through its class anchors (the paper's qualitative figure).

:func:`explain_video` takes a file; :func:`explain_clip` an already decoded clip (what ``calmcap
serve`` runs on its model thread, having decoded the upload beside it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from calmcap.errors import CalmcapError, VideoDecodeError
from calmcap.pipeline.caption import CaptionOptions
from calmcap.pipeline.features import encode_clips
from calmcap.pipeline.loading import LoadedModel, ModelLike, frame_settings, load_model
from calmcap.pipeline.prefetch import DecodedClip, decode_clip

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from calmcap.models.calm import CALMModel

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class AnchorExplanation:
    """The video's anchor distribution and its caption's (the paper's qualitative figure).

    ``video`` is ``V_p`` (video vs anchors); ``predicted`` is ``S_p_hat``, the text
    distribution the VAE generates from ``V_p`` (None for the direct-alignment variants);
    ``caption`` is ``S_p`` of ``caption_text``. Each is a list of ``(label, probability)``,
    highest first, ``top_k`` long.
    """

    video_path: str
    caption_text: str
    caption_source: str  # "given" or "generated"
    num_anchors: int
    video: list[tuple[str, float]]
    predicted: list[tuple[str, float]] | None
    caption: list[tuple[str, float]]
    overlap: list[str]

    def plot(self, path: PathLike) -> Path:
        """Bar charts of the top anchors: the video's ``V_p``, the VAE's ``S_p_hat``, the caption's ``S_p``."""
        from calmcap.reports import new_figure

        panels = [("video  $V_p$", self.video)]
        if self.predicted is not None:
            panels.append(("caption predicted by the VAE  $\\hat S_p$", self.predicted))
        panels.append((f"{self.caption_source} caption  $S_p$", self.caption))
        k = max(len(values) for _, values in panels)
        figure = new_figure(4.2 * len(panels), 1.2 + 0.32 * k)
        shared = set(self.overlap)
        for i, (title, values) in enumerate(panels):
            ax = figure.add_subplot(1, len(panels), i + 1)
            labels = [label for label, _ in values][::-1]
            probs = [100.0 * p for _, p in values][::-1]
            colors = ["tab:orange" if label in shared else "tab:blue" for label in labels]
            ax.barh(range(len(labels)), probs, color=colors)
            ax.set_yticks(range(len(labels)))
            ax.set_yticklabels([label if len(label) <= 32 else label[:31] + "…" for label in labels], fontsize=8)
            ax.set_xlabel("probability (%)")
            ax.set_title(title, fontsize=9)
        caption = self.caption_text if len(self.caption_text) <= 90 else self.caption_text[:89] + "…"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        figure.suptitle(f"{Path(self.video_path).name}: \"{caption}\"  "
                        f"(orange: in both top-{k} of video and caption)", fontsize=9)
        figure.tight_layout()
        figure.savefig(path)
        return Path(path)

    def to_json(self) -> dict[str, Any]:
        def pairs(values: list[tuple[str, float]] | None) -> list[dict[str, Any]] | None:
            return None if values is None else [{"label": label, "probability": p} for label, p in values]

        return {
            "video": self.video_path, "caption": self.caption_text, "caption_source": self.caption_source,
            "num_anchors": self.num_anchors, "video_anchors": pairs(self.video),
            "predicted_caption_anchors": pairs(self.predicted), "caption_anchors": pairs(self.caption),
            "overlap": self.overlap,
        }


def check_explainable(network: CALMModel, top_k: int = 10, out_png: PathLike | None = None) -> None:
    """Raise :class:`CalmcapError` unless ``network`` can be explained this way (before any decoding).

    A baseline model has no anchor branch; ``top_k`` must be positive; the chart's file name must
    say a format matplotlib writes.
    """
    if network.anchor_bank is None:
        raise CalmcapError(
            f"this model has no anchor branch (alignment.variant={network.config.alignment.variant!r}, "
            f"{len(network.labels)} anchors): a baseline has no anchor distribution to explain"
        )
    if top_k < 1:
        raise CalmcapError(f"top_k must be at least 1, got {top_k}")
    if out_png is not None and Path(out_png).suffix.lower() not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise CalmcapError(f"{out_png}: the chart is written as .png, .pdf, .svg or .jpg; name the file accordingly")


def explain_video(
    video: PathLike,
    model: ModelLike = None,
    *,
    caption: str | None = None,
    top_k: int = 10,
    out_png: PathLike | None = None,
    options: CaptionOptions | None = None,
    num_frames: int | None = None,
    device: str = "cpu",
) -> AnchorExplanation:
    """Top anchors of a video's anchor distribution and of its caption's (given, else generated).

    Raises :class:`CalmcapError` for a baseline model without the anchor branch and
    :class:`VideoDecodeError` for a video that cannot be decoded. With ``out_png`` a bar chart
    is written there (:meth:`AnchorExplanation.plot`).
    """
    loaded = load_model(model, device)
    check_explainable(loaded.model, top_k, out_png)
    frames, image_size = frame_settings(loaded.model, num_frames)
    clip = decode_clip(video, frames, image_size)
    if clip.error is not None:
        raise VideoDecodeError(str(video), clip.error)
    return explain_clip(clip, loaded, caption=caption, top_k=top_k, out_png=out_png, options=options)


def explain_clip(
    clip: DecodedClip,
    model: ModelLike = None,
    *,
    caption: str | None = None,
    top_k: int = 10,
    out_png: PathLike | None = None,
    options: CaptionOptions | None = None,
) -> AnchorExplanation:
    """:func:`explain_video` of a decoded clip (``clip.video`` [T, 3, S, S]; its path names it)."""
    import torch

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    network = loaded.model
    check_explainable(network, top_k, out_png)
    if clip.video is None:
        raise VideoDecodeError(clip.path, clip.error or "the clip was not decoded")
    features, mask = encode_clips(network, [clip], None)
    with torch.inference_mode():
        video_dist = network.video_distribution(features, mask)[0].float()
        predicted = None
        if network.vae is not None:
            predicted = network.vae(video_dist[None], sample=False)["text_logprob_hat"][0].exp().float()
        source = "given"
        if caption is None or not caption.strip():
            decoding = (options or CaptionOptions()).resolve(loaded.generation)
            out = network.generate(frame_features=features, video_mask=mask, options=decoding)
            caption, source = out["captions"][0], "generated"
        text_dist = network.text_distribution(network.encode_text_raw(network.tokenize_text([caption])))[0].float()
    labels = network.labels
    k = min(top_k, len(labels))

    def top(dist: torch.Tensor) -> list[tuple[str, float]]:
        values, indices = dist.topk(k)
        return [(labels[int(i)], float(v)) for v, i in zip(values.tolist(), indices.tolist(), strict=True)]

    explanation = AnchorExplanation(
        video_path=clip.path, caption_text=caption, caption_source=source, num_anchors=len(labels),
        video=top(video_dist), predicted=top(predicted) if predicted is not None else None, caption=top(text_dist),
        overlap=[],
    )
    caption_labels = {label for label, _ in explanation.caption}
    explanation.overlap = [label for label, _ in explanation.video if label in caption_labels]
    if out_png is not None:
        explanation.plot(out_png)
    return explanation
