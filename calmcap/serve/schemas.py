"""What the endpoints return: pydantic models that FastAPI turns into the OpenAPI schemas.

The JSON itself is built by the library's own ``to_json`` (:class:`~calmcap.pipeline.CaptionResult`,
:class:`~calmcap.pipeline.AnchorExplanation`, :class:`~calmcap.video_index.SearchHit`), as the CLI's
``--json`` prints it; these models describe it (tests/test_serve.py checks each answer against
its schema).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class ErrorAnswer(BaseModel):
    """Every error: one line, as the CLI prints it (a bad video: ``name: reason``)."""

    detail: str


class Beam(BaseModel):
    caption: str
    score: float


class CaptionAnswer(BaseModel):
    """What ``calmcap caption --json`` prints for one video (the one item of its array)."""

    video: str = Field(description="the uploaded file's name")
    caption: str = Field(description="the best caption")
    score: float = Field(
        description="length-penalised log-probability (beam search); mean token log-probability (sampling)")
    beams: list[Beam] | None = Field(None, description="with num_return_sequences > 1: every caption, best first")
    frames: list[str] | None = Field(None, description="with frames=true: the frames the model saw, JPEG data URLs")


class AnchorProbability(BaseModel):
    label: str
    probability: float


class ExplainAnswer(BaseModel):
    """What ``calmcap explain --json`` prints: the numbers behind the anchor chart."""

    video: str = Field(description="the uploaded file's name")
    caption: str
    caption_source: str = Field(description="'given' or 'generated'")
    num_anchors: int
    video_anchors: list[AnchorProbability] = Field(description="top anchors of the video (V_p), highest first")
    predicted_caption_anchors: list[AnchorProbability] | None = Field(
        description="top anchors of the caption the VAE predicts from the video (S_p_hat); null without a VAE")
    caption_anchors: list[AnchorProbability] = Field(description="top anchors of the caption (S_p)")
    overlap: list[str] = Field(description="labels in both the video's and the caption's top k")


class SearchHitAnswer(BaseModel):
    rank: int
    video: str = Field(description="the indexed video, as `calmcap index` recorded it")
    score: float = Field(description="cosine similarity of the query and the video")
    frame_url: str = Field(description="the video's middle frame (JPEG) on this server")


class SearchAnswer(BaseModel):
    """What ``calmcap retrieve --json`` prints for one query, with a frame per hit."""

    query: str
    results: list[SearchHitAnswer]


class QueueState(BaseModel):
    capacity: int = Field(description="requests admitted at once (--queue-size)")
    admitted: int = Field(description="requests now uploading, decoding, waiting for the model or in it")
    waiting_for_model: int
    max_batch_size: int
    batches: int = Field(description="caption batches run since start")
    captions: int = Field(description="captions made since start")


class HealthAnswer(BaseModel):
    status: str = Field(description="'ok'")
    model: str = Field(description="the architecture's name")
    index_videos: int | None = Field(description="videos in the index; null when the server has none")
    uptime_seconds: float
    queue: QueueState


class Limits(BaseModel):
    max_upload_bytes: int
    request_timeout_seconds: float
    max_num_beams: int
    max_return_sequences: int
    max_search_top_k: int


class ModelAnswer(BaseModel):
    """Which model answers, what it is, and how it decodes when a request says nothing."""

    identity: dict[str, Any] = Field(description="path, name, weights sha256, ... (what reports and indexes record)")
    architecture: dict[str, Any] = Field(
        description="the checkpoint's config.json `model` (calmcap.config.ModelConfig)")
    decoding: dict[str, Any] = Field(description="decoding defaults: the checkpoint's `generation`, else the built-in")
    labels: list[str] = Field(description="the anchor labels (empty for a baseline)")
    limits: Limits
    index: dict[str, Any] | None = Field(description="the index given at start: path and number of videos")
