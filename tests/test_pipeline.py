"""calmcap.pipeline and calmcap.video_index: the Python API behind the CLI.

The tiny checkpoints are built once per session (``tiny_checkpoint`` / ``baseline_checkpoint``
below are shared with tests/test_cli.py and tests/test_reports.py through ``checkpoint_dirs``).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from calmcap.errors import CalmcapError, VideoDecodeError

_CHECKPOINTS: dict[str, Path] = {}


def checkpoint_dirs(tmp_path_factory, make_model) -> dict[str, Path]:
    """Tiny CALM and baseline checkpoints, saved once per session."""
    if not _CHECKPOINTS:
        root = tmp_path_factory.mktemp("checkpoints")
        # On the shipped synth towers, as users' checkpoints are: a random ResNet tower (its
        # bottlenecks' last BN scales start at zero) maps the clips to near-ties that rank arbitrarily.
        tag = "clip.pretrained=synth"
        make_model(seed=0, overrides=[tag]).save_pretrained(root / "calm")
        make_model(seed=0, overrides=[tag, "alignment.variant=none"]).save_pretrained(root / "baseline")
        _CHECKPOINTS.update(calm=root / "calm", baseline=root / "baseline")
    return _CHECKPOINTS


def manifest_videos(manifest: Path, split: str) -> list[Path]:
    """The video files of one split of a manifest, in manifest order."""
    entries = [json.loads(line) for line in manifest.read_text().splitlines()]
    return [manifest.parent / e["video"] for e in entries if e["split"] == split]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, make_model) -> Path:
    return checkpoint_dirs(tmp_path_factory, make_model)["calm"]


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    from calmcap.pipeline import load_model

    return load_model(tiny_checkpoint)


# ============================================================================ inputs and options


def test_expand_video_inputs_files_dirs_globs_and_problems(tmp_path):
    from calmcap.pipeline import expand_video_inputs

    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.mp4", "a/deep/y.MKV", "a/notes.txt", "z.avi"):
        (tmp_path / name).write_bytes(b"0")
    (tmp_path / "empty").mkdir()
    explicit = tmp_path / "a" / "notes.txt"  # named explicitly: kept whatever its extension
    videos, problems = expand_video_inputs([
        tmp_path / "a", str(tmp_path / "*.avi"), str(tmp_path / "a" / "x.mp4"), explicit,
        tmp_path / "missing.mp4", str(tmp_path / "nothing*.mp4"), tmp_path / "empty",
    ])
    assert videos == [str(tmp_path / "a" / "deep" / "y.MKV"), str(tmp_path / "a" / "x.mp4"), str(tmp_path / "z.avi"),
                      str(explicit)]
    reasons = dict(problems)
    assert reasons[str(tmp_path / "missing.mp4")] == "no such file or directory"
    assert "matches no video" in reasons[str(tmp_path / "nothing*.mp4")]
    assert "no video files" in reasons[str(tmp_path / "empty")]


@pytest.mark.parametrize("kwargs, fragment", [
    ({"num_beams": 0}, "num_beams"),
    ({"min_length": 30, "max_length": 20}, "min_length"),
    ({"num_return_sequences": 4, "num_beams": 3, "do_sample": False}, "num_return_sequences"),
    ({"do_sample": True, "top_p": 0.0}, "top_p"),
    ({"do_sample": True, "temperature": 0.0}, "temperature"),
])
def test_caption_options_reject_impossible_settings(kwargs, fragment):
    from calmcap.pipeline import CaptionOptions

    with pytest.raises(CalmcapError, match=fragment):
        CaptionOptions(**kwargs).validate()
    CaptionOptions(do_sample=True, num_return_sequences=4, num_beams=1).validate()  # sampling may return more


def test_caption_options_take_the_checkpoints_generation_settings():
    from calmcap.config import DecodeOptions
    from calmcap.pipeline import CaptionOptions

    trained = DecodeOptions(max_length=40, num_beams=5)  # a checkpoint's generation
    resolved = CaptionOptions().resolve(trained)
    assert resolved == trained and isinstance(resolved, DecodeOptions)
    assert CaptionOptions(max_length=12).resolve(trained).max_length == 12  # the caller wins
    assert CaptionOptions(do_sample=False).resolve(trained).num_beams == 5
    assert CaptionOptions().resolve() == DecodeOptions()  # no checkpoint: the built-in settings
    # Checks between two settings wait for both: min 30 is fine under the model's 40, not under 20.
    CaptionOptions(min_length=30).validate().resolve(trained)
    with pytest.raises(CalmcapError, match="min_length"):
        CaptionOptions(min_length=30).resolve()
    # Four captions need four beams, unless sampling: known once the checkpoint's settings are in.
    CaptionOptions(num_return_sequences=4).validate()
    with pytest.raises(CalmcapError, match="cannot exceed num_beams \\(3\\)"):
        CaptionOptions(num_return_sequences=4).resolve()
    assert CaptionOptions(num_return_sequences=4).resolve(DecodeOptions(num_beams=4)).num_return_sequences == 4


def test_model_resolution_order(tmp_path, monkeypatch):
    from calmcap.pipeline import DEFAULT_MODEL_DIR, MODEL_ENV, resolve_model_path

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    from calmcap.pipeline import TRAIN_COMMAND

    with pytest.raises(CalmcapError, match=re.escape(TRAIN_COMMAND)):
        resolve_model_path(None)
    default = tmp_path / DEFAULT_MODEL_DIR
    default.mkdir(parents=True)
    (default / "config.json").write_text("{}")
    assert resolve_model_path(None) == Path(DEFAULT_MODEL_DIR)
    monkeypatch.setenv(MODEL_ENV, "/elsewhere/model")
    assert resolve_model_path(None) == Path("/elsewhere/model")
    assert resolve_model_path("given") == Path("given")


def test_lazy_package_exports():
    import calmcap
    import calmcap.pipeline as pipeline

    assert calmcap.caption_video is pipeline.caption_video
    assert calmcap.search_index is pipeline.search_index
    with pytest.raises(AttributeError):
        calmcap.no_such_thing  # noqa: B018


# ============================================================================ captioning


def test_caption_videos_order_errors_overlap_and_stats(tiny_checkpoint, synth_small, tmp_path):
    from calmcap.pipeline import CaptionOptions, PipelineStats, caption_video, caption_videos

    good = manifest_videos(synth_small, "test")[:3]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video" * 100)
    inputs = [good[0], broken, good[1], tmp_path / "missing.mp4", good[2]]
    options = CaptionOptions(num_beams=2, max_length=6, num_return_sequences=2)
    stats = PipelineStats()
    overlapped = caption_videos(inputs, tiny_checkpoint, options=options, batch_size=2, stats=stats)
    sequential = caption_videos(inputs, tiny_checkpoint, options=options, batch_size=3, overlap=False)
    assert [r.video for r in overlapped] == [str(p) for p in inputs]
    assert [r.ok for r in overlapped] == [True, False, True, False, True]
    assert "not found" in overlapped[3].error
    # Batching and overlap change nothing but speed.
    assert [(r.caption, r.error) for r in overlapped] == [(r.caption, r.error) for r in sequential]
    for r in overlapped:
        if r.ok:
            assert r.caption == r.beams[0][0] and len(r.beams) == 2
            assert r.beams[0][1] >= r.beams[1][1] and r.score == pytest.approx(r.beams[0][1])
    assert (stats.videos, stats.failed) == (3, 2)
    assert stats.decode_seconds > 0 and stats.tower_seconds > 0 and stats.decoder_seconds > 0
    assert stats.wall_seconds >= stats.tower_seconds + stats.decoder_seconds
    assert caption_video(good[0], tiny_checkpoint, options=options) == overlapped[0].caption
    with pytest.raises(VideoDecodeError, match="broken.mp4"):
        caption_video(broken, tiny_checkpoint)


def test_captions_decode_as_the_checkpoint_says_unless_told_otherwise(make_model, synth_small, tmp_path):
    from calmcap.checkpoint import read_generation, save_pretrained
    from calmcap.config import DecodeOptions
    from calmcap.pipeline import CaptionOptions, caption_videos, evaluate_checkpoint, load_model

    path = save_pretrained(make_model(seed=0, overrides=["clip.pretrained=synth"]), tmp_path / "model",
                           generation=DecodeOptions(num_beams=1, max_length=2))
    assert read_generation(path) == DecodeOptions(num_beams=1, max_length=2)
    assert load_model(path).generation == DecodeOptions(num_beams=1, max_length=2)
    videos = manifest_videos(synth_small, "test")[:2]
    short = caption_videos(videos, path)
    longer = caption_videos(videos, path, options=CaptionOptions(max_length=8))
    assert all(len(r.caption.split()) <= 2 for r in short)
    assert max(len(r.caption.split()) for r in longer) > 2
    report = evaluate_checkpoint(path, synth_small, ["test"], retrieval=False, use_java=False, max_videos=2)
    assert report.settings["decode"]["max_length"] == 2 and report.settings["decode"]["num_beams"] == 1


def test_caption_equals_evaluation_caption(tiny_checkpoint, synth_small):
    """The CLI's preprocessing is the evaluation dataset's: same video, same caption."""
    from calmcap.pipeline import CaptionOptions, caption_videos, evaluate_checkpoint

    report = evaluate_checkpoint(tiny_checkpoint, synth_small, ["test"], captioning=True, retrieval=False,
                                 use_java=False, decode=CaptionOptions(num_beams=2, max_length=6), batch_size=2)
    row = report.rows[0]
    videos = manifest_videos(synth_small, "test")
    results = caption_videos(videos, tiny_checkpoint, options=CaptionOptions(num_beams=2, max_length=6))
    ids = [json.loads(line)["video_id"] for line in synth_small.read_text().splitlines() if '"split": "test"' in line]
    assert {i: r.caption for i, r in zip(ids, results, strict=True)} == row.predictions


def test_load_model_is_cached_and_num_frames_checked(tiny_checkpoint, tiny_model, make_model):
    from calmcap.config import DecodeOptions
    from calmcap.pipeline import LoadedModel, frame_settings, load_model

    assert isinstance(tiny_model, LoadedModel) and tiny_model.path == tiny_checkpoint
    assert tiny_model.generation == DecodeOptions()  # saved without generation settings: the built-in ones
    assert load_model(tiny_checkpoint) is tiny_model
    assert load_model(tiny_model) is tiny_model
    in_memory = make_model(seed=0)
    assert load_model(in_memory) == LoadedModel(in_memory, None, DecodeOptions())
    assert frame_settings(tiny_model.model, None) == (8, 64)
    assert frame_settings(tiny_model.model, 4) == (4, 64)
    with pytest.raises(CalmcapError, match="between 1 and the model's 8"):
        frame_settings(tiny_model.model, 9)


def test_prefetcher_can_stop_early(synth_small):
    from calmcap.pipeline import ClipPrefetcher

    videos = manifest_videos(synth_small, "train")[:12]
    with ClipPrefetcher(videos, 4, 32, depth=2) as prefetcher:
        first = next(iter(prefetcher))
    assert first.index == 0 and first.video.shape == (4, 3, 32, 32) and first.mask.all()
    assert not prefetcher._thread.is_alive()


# ============================================================================ index


def _fake_identity(sha: str = "a" * 64) -> dict:
    return {"path": "/m", "name": "tiny", "sha256": sha, "config_sha256": "c"}


def test_index_writer_parts_resume_and_search(tmp_path):
    from calmcap.video_index import PENDING_DIR, IndexWriter, VideoIndex

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(7, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"/v/{i}.mp4" for i in range(7)]
    writer = IndexWriter(tmp_path / "idx", model=_fake_identity(), embed_dim=16, num_frames=8)
    writer.add(ids[:3], vectors[:3])
    writer.flush()
    writer.add(ids[3:5], vectors[3:5])
    writer.flush()  # "interrupted": never finalized
    assert len(list((tmp_path / "idx" / PENDING_DIR).glob("*.json"))) == 2
    partial = VideoIndex.open(tmp_path / "idx")
    assert partial.ids == ids[:5]  # pending parts are searchable

    resumed = IndexWriter(tmp_path / "idx", model=_fake_identity(), embed_dim=16, num_frames=8)
    assert resumed.done == set(ids[:5])
    resumed.add(ids[3:], vectors[3:])  # 3 and 4 are already there: skipped
    resumed.finalize()
    index = VideoIndex.open(tmp_path / "idx")
    assert index.ids == ids and not (tmp_path / "idx" / PENDING_DIR).exists()
    stored = np.load(tmp_path / "idx" / "embeddings.npy")
    assert stored.dtype == np.float16 and stored.shape == (7, 16)
    np.testing.assert_allclose(stored, vectors, atol=1e-3)

    query = rng.normal(size=(2, 16)).astype(np.float32)
    hits = index.search(query, top_k=4)
    brute = query @ stored.astype(np.float32).T
    for q, row in enumerate(hits):
        assert [h.video for h in row] == [ids[i] for i in np.argsort(-brute[q], kind="stable")[:4]]
        assert [h.rank for h in row] == [1, 2, 3, 4]
        np.testing.assert_allclose([h.score for h in row], np.sort(brute[q])[::-1][:4], rtol=1e-5)

    with pytest.raises(CalmcapError, match="another model"):
        IndexWriter(tmp_path / "idx", model=_fake_identity("b" * 64), embed_dim=16, num_frames=8)
    with pytest.raises(CalmcapError, match="frames"):
        IndexWriter(tmp_path / "idx", model=_fake_identity(), embed_dim=16, num_frames=4)
    IndexWriter(tmp_path / "idx", model=_fake_identity("b" * 64), embed_dim=16, num_frames=8, overwrite=True)
    assert len(VideoIndex.open(tmp_path / "idx")) == 0


def test_index_ties_break_by_row_and_duplicate_parts_are_ignored(tmp_path):
    from calmcap.video_index import PENDING_DIR, IndexWriter, VideoIndex

    vectors = np.zeros((40, 4), dtype=np.float32)
    vectors[:, 0] = 1.0  # all tie
    writer = IndexWriter(tmp_path / "idx", model=_fake_identity(), embed_dim=4, num_frames=8)
    writer.add([str(i) for i in range(40)], vectors)
    writer.finalize()
    # A crash between merging and deleting the parts leaves a part whose ids are merged already.
    pending = tmp_path / "idx" / PENDING_DIR
    pending.mkdir()
    np.save(pending / "part-000009.npy", np.ones((1, 4), dtype=np.float16))
    (pending / "part-000009.json").write_text('["3"]')
    index = VideoIndex.open(tmp_path / "idx")
    assert len(index) == 40
    assert [h.video for h in index.search(np.array([1.0, 0, 0, 0]), top_k=5)[0]] == ["0", "1", "2", "3", "4"]


def test_build_and_search_index_api(tiny_checkpoint, tiny_model, synth_small, tmp_path):
    import torch

    from calmcap.pipeline import build_index, decode_clip, search_index

    videos = manifest_videos(synth_small, "test")
    report = build_index(videos[:2] + [tmp_path / "gone.mp4"], tmp_path / "idx", tiny_checkpoint, batch_size=2)
    assert (report.added, report.skipped, report.total) == (2, 0, 2) and report.bad[0][0].endswith("gone.mp4")
    report = build_index(videos, tmp_path / "idx", tiny_checkpoint, batch_size=2)
    assert (report.added, report.skipped, report.total) == (3, 2, 5)

    queries = ["a red circle moves to the left", "a tiny blue square"]
    hits = search_index(tmp_path / "idx", queries, tiny_checkpoint, top_k=5)
    single = search_index(tmp_path / "idx", queries[0], tiny_checkpoint, top_k=5)
    assert [h.video for h in single] == [h.video for h in hits[0]]
    with torch.inference_mode():
        clips = [decode_clip(v, 8, 64) for v in videos]
        video = torch.stack([c.video for c in clips])
        embeds = tiny_model.model.encode_video(video, torch.stack([c.mask for c in clips])).numpy()
        text = tiny_model.model.encode_text(queries).numpy()
    brute = text @ embeds.T
    for q in range(2):
        expected = [str(Path(videos[i]).resolve()) for i in np.argsort(-brute[q])]
        assert [h.video for h in hits[q]] == expected
        np.testing.assert_allclose([h.score for h in hits[q]], np.sort(brute[q])[::-1], atol=2e-3)

    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    with (other / "model.safetensors").open("r+b") as handle:  # same size, other weights
        handle.seek(-4, 2)
        handle.write(b"\x00\x00\x80\x3f")
    with pytest.raises(CalmcapError, match="another model"):
        search_index(tmp_path / "idx", "x", other)


# ============================================================================ scoring


def test_score_captions_formats_and_mismatch(synth_small):
    from calmcap.metrics import caption_metrics
    from calmcap.pipeline import load_predictions, load_references, score_captions

    refs = load_references(synth_small, "test")
    preds = {k: v[0] for k, v in refs.items()}
    coco = [{"image_id": k, "caption": v} for k, v in preds.items()]
    annotations = [{"image_id": k, "caption": c} for k, cs in refs.items() for c in cs]
    result = score_captions(coco, {"annotations": annotations}, use_java=False)
    assert result.metrics == caption_metrics(preds, refs, use_java=False)
    assert result.num_videos == 5 and result.num_references == 25
    assert load_predictions({"1": "a"}) == {"1": "a"}
    assert load_predictions([{"image_id": 7, "caption": "x"}]) == {"7": "x"}
    assert load_references({"7": "x"}) == {"7": ["x"]}
    with pytest.raises(CalmcapError, match="more than one prediction"):
        load_predictions([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}])
    with pytest.raises(CalmcapError, match="1 reference id"):
        score_captions(dict(list(preds.items())[:4]), refs, use_java=False)
    with pytest.raises(CalmcapError, match="--split applies to manifest"):
        load_references({"a": ["b"]}, "test")


def test_explain_clip_of_a_decoded_clip_is_explain_video_of_its_file(tiny_checkpoint, synth_small):
    """explain_video = decode + explain_clip (calmcap serve decodes beside the model, then explains the clip)."""
    from calmcap.errors import VideoDecodeError
    from calmcap.pipeline import DecodedClip, decode_clip, explain_clip, explain_video, frame_settings, load_model

    video = manifest_videos(synth_small, "test")[0]
    loaded = load_model(tiny_checkpoint)
    num_frames, image_size = frame_settings(loaded.model, None)
    from_file = explain_video(video, loaded, caption="a red circle", top_k=5)
    from_clip = explain_clip(decode_clip(video, num_frames, image_size), loaded, caption="a red circle", top_k=5)
    assert from_clip.to_json() == from_file.to_json()
    assert len(from_clip.video) == 5 and from_clip.caption_source == "given"
    with pytest.raises(VideoDecodeError, match="truncated"):
        explain_clip(DecodedClip(index=0, path="x.mp4", error="truncated"), loaded)
