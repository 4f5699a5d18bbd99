"""Names and numbers that several modules share, defined once (torch-free, import-free).

Checkpoint, cache and check-report file names; the bound on decoded frame size. The module that
owns a format documents it (:mod:`calmcap.checkpoint`, :mod:`calmcap.data.cache`,
:mod:`calmcap.data.video_check`); this one only names its files, so that a reader (the
pipeline peeking at a checkpoint's config, the reports hashing its weights) and the writer
cannot disagree.
"""

# Decoded frames whose larger side exceeds this are downscaled inside the decoder (issue #7):
# it bounds memory on huge videos, and CLIP resizes far below it anyway. Training, evaluation,
# the CLI and the caches all decode with it, so a frame is the same whichever path read it.
MAX_FRAME_SIDE = 1280

# A checkpoint directory (calmcap.checkpoint).
CHECKPOINT_CONFIG_FILE = "config.json"
CHECKPOINT_WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_TOKENIZER_FILE = "tokenizer.model"
CHECKPOINT_ANCHORS_FILE = "anchors.txt"

# A manifest folder holds its manifest under this name (calmcap.data.manifest).
MANIFEST_FILE = "manifest.jsonl"

# The frames and features caches (calmcap.data.cache): <cache_dir>/<kind>/..., described by
# <cache_dir>/<kind>/cache.json.
FRAMES = "frames"
FEATURES = "features"
CACHE_META_FILE = "cache.json"

# What a pass over a manifest's videos leaves behind (calmcap.data.video_check and the caches).
BAD_VIDEOS_FILE = "bad_videos.jsonl"
CHECK_PROGRESS_FILE = "progress.jsonl"
CHECK_SUMMARY_FILE = "summary.json"
