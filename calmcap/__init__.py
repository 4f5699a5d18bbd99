"""calmcap: video captioning and text-video retrieval with class-anchor-aligned generative modeling (CALM).

Importing the package is cheap and has no side effects; torch, open_clip and transformers are
imported by the modules that use them. The main entry points of :mod:`calmcap.pipeline` are
available here lazily (``calmcap.caption_video(path, model=...)``): the attribute access
imports the pipeline, not ``import calmcap``.
"""

from calmcap.version import __version__

_PIPELINE_EXPORTS = (
    "caption_video",
    "caption_videos",
    "evaluate_checkpoint",
    "score_captions",
    "build_index",
    "search_index",
    "rank_sentences",
    "explain_video",
    "load_model",
    "LoadedModel",
    "CaptionOptions",
)

__all__ = ["__version__", *_PIPELINE_EXPORTS]


def __getattr__(name: str):
    if name in _PIPELINE_EXPORTS:
        from calmcap import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'calmcap' has no attribute {name!r}")


def __dir__() -> list:
    return sorted(list(globals()) + list(_PIPELINE_EXPORTS))
