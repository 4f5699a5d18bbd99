"""The Python API behind the ``calmcap`` command line: caption, evaluate, score, index, retrieve, explain.

Every CLI subcommand is a thin wrapper over one function here, so what the command does can
be done from Python with the same defaults::

    import calmcap
    calmcap.caption_video("clip.mp4", model="runs/synth_tiny/model")          # -> str
    calmcap.caption_videos(["a.mp4", "b.mp4"], model=model)                   # -> [CaptionResult]
    calmcap.evaluate_checkpoint("runs/m", [("data/synth", ["test", "test_ood"])], out="reports/m")
    calmcap.score_captions("predictions.json", "annotations.json")
    calmcap.build_index(videos, "index/", model="runs/m")
    calmcap.search_index("index/", "a red circle", model="runs/m")
    calmcap.explain_video("clip.mp4", model="runs/m")

``model`` is a checkpoint directory, a :class:`LoadedModel` (what :func:`load_model` returns),
a :class:`~calmcap.models.calm.CALMModel`, or ``None``: then ``$CALMCAP_MODEL``, else
``runs/synth_tiny/model`` (what the README's main job writes, relative to the working directory).

One module per idea:

* :mod:`~calmcap.pipeline.loading`: which model, loaded once (:class:`LoadedModel`);
* :mod:`~calmcap.pipeline.inputs`: video arguments (files, directories, globs) and manifests;
* :mod:`~calmcap.pipeline.prefetch`: decoding ahead of the model in a background thread;
* :mod:`~calmcap.pipeline.features`: decoded clips through the image tower;
* :mod:`~calmcap.pipeline.caption`: captioning (:class:`CaptionOptions`, :func:`iter_captions`);
* :mod:`~calmcap.pipeline.evaluate`: a checkpoint on manifests and splits, with reports;
* :mod:`~calmcap.pipeline.scoring`: any system's captions against references;
* :mod:`~calmcap.pipeline.search`: the video index, text-to-video and video-to-text;
* :mod:`~calmcap.pipeline.explain`: a video's class anchors;
* :mod:`~calmcap.pipeline.stats`: where the time went.

Importing the package is cheap (no torch); heavy imports happen inside the functions.
"""

from calmcap.pipeline.caption import (
    DECODE_DEFAULTS,
    DECODER_THREADS,
    CaptionOptions,
    CaptionResult,
    caption_clips,
    caption_video,
    caption_videos,
    iter_captions,
)
from calmcap.pipeline.evaluate import DataSpec, evaluate_checkpoint
from calmcap.pipeline.explain import AnchorExplanation, check_explainable, explain_clip, explain_video
from calmcap.pipeline.features import encode_clips, encode_video_file
from calmcap.pipeline.inputs import VIDEO_EXTENSIONS, expand_video_inputs, resolve_manifest
from calmcap.pipeline.loading import (
    DEFAULT_MODEL_DIR,
    MODEL_ENV,
    TRAIN_COMMAND,
    LoadedModel,
    ModelLike,
    frame_settings,
    load_model,
    resolve_model_path,
)
from calmcap.pipeline.prefetch import ClipPrefetcher, DecodedClip, clip_batches, decode_clip
from calmcap.pipeline.scoring import ScoreResult, load_predictions, load_references, score_captions
from calmcap.pipeline.search import build_index, rank_sentences, search_index
from calmcap.pipeline.stats import PipelineStats

__all__ = [
    "AnchorExplanation",
    "CaptionOptions",
    "CaptionResult",
    "ClipPrefetcher",
    "DECODER_THREADS",
    "DECODE_DEFAULTS",
    "DEFAULT_MODEL_DIR",
    "DataSpec",
    "DecodedClip",
    "LoadedModel",
    "MODEL_ENV",
    "ModelLike",
    "PipelineStats",
    "ScoreResult",
    "TRAIN_COMMAND",
    "VIDEO_EXTENSIONS",
    "build_index",
    "caption_clips",
    "caption_video",
    "caption_videos",
    "check_explainable",
    "clip_batches",
    "decode_clip",
    "encode_clips",
    "encode_video_file",
    "evaluate_checkpoint",
    "expand_video_inputs",
    "explain_clip",
    "explain_video",
    "frame_settings",
    "iter_captions",
    "load_model",
    "load_predictions",
    "load_references",
    "rank_sentences",
    "resolve_manifest",
    "resolve_model_path",
    "score_captions",
    "search_index",
]
