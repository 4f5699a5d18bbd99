"""Tests of the embedded benchmark generator (calmcap.data.synth): tiny sizes, CPU, offline."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from calmcap.data import synth
from calmcap.data.manifest import ManifestEntry, read_manifest, resolve_video_path
from calmcap.errors import CalmcapError, ConfigError
from calmcap.labels import parse_labels

NUM_PER_SPLIT = 6
NUM_FRAMES = 12
SIZE = 64
TINY = dict(num_train=NUM_PER_SPLIT, num_val=NUM_PER_SPLIT, num_test=NUM_PER_SPLIT, num_test_ood=NUM_PER_SPLIT,
            num_frames_per_video=NUM_FRAMES, fps=8.0, size=SIZE, progress=False)


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth_seed0")
    summary = synth.generate_benchmark(out, seed=0, workers=0, **TINY)
    return out, summary


@pytest.fixture(scope="module")
def bench_two_workers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth_seed0_workers2")
    synth.generate_benchmark(out, seed=0, workers=2, **TINY)
    return out


@pytest.fixture(scope="module")
def entries(bench: tuple[Path, dict]) -> list[ManifestEntry]:
    return read_manifest(bench[0] / "manifest.jsonl")


def _phrases_in(caption: str, phrases) -> list[str]:
    """The phrases that occur in the caption as whole words."""
    return [p for p in phrases if re.search(r"(?<![\w-])" + re.escape(p) + r"(?![\w-])", caption)]


def test_summary_and_splits(bench, entries):
    out, summary = bench
    assert summary["num_videos"] == {split: NUM_PER_SPLIT for split in synth.SPLITS}
    assert Counter(e.split for e in entries) == {split: NUM_PER_SPLIT for split in synth.SPLITS}
    assert len({e.video_id for e in entries}) == len(entries)
    for e in entries:
        assert e.extra["domain"] == synth.SPLIT_DOMAIN[e.split]
        assert e.video == f"videos/{e.split}/{e.video_id}.mp4"
        assert len(e.captions) == synth.CAPTIONS_PER_VIDEO
        assert len(set(e.captions)) == len(e.captions), "paraphrases of one video must differ"
    assert {synth.SPLIT_DOMAIN[s] for s in ("train", "val", "test")} == {"A"}
    assert synth.SPLIT_DOMAIN["test_ood"] == "B"


def test_videos_exist_and_decode(bench, entries):
    av = pytest.importorskip("av")
    out, _ = bench
    for e in entries:
        path = resolve_video_path(out / "manifest.jsonl", e)
        assert path.is_file()
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert len(frames) == NUM_FRAMES
        assert frames[0].shape == (SIZE, SIZE, 3)
        # Something is drawn: a still, uniform picture would have no spread at all.
        assert np.stack(frames).std() > 5
    assert not list(out.rglob("*.part")), "no temporary files may be left behind"


def test_same_seed_gives_identical_output_and_worker_count_does_not_matter(bench, bench_two_workers):
    out, _ = bench
    for name in ("manifest.jsonl", "benchmark.json", "concepts.txt"):
        assert (out / name).read_bytes() == (bench_two_workers / name).read_bytes(), name
    videos = sorted(p.relative_to(out) for p in (out / "videos").rglob("*.mp4"))
    assert len(videos) == 4 * NUM_PER_SPLIT
    for rel in videos:
        assert (out / rel).read_bytes() == (bench_two_workers / rel).read_bytes(), rel


def test_other_seed_differs(bench, tmp_path):
    out, _ = bench
    synth.generate_benchmark(tmp_path, seed=1, workers=0, **{**TINY, "num_frames_per_video": 4})
    assert (tmp_path / "manifest.jsonl").read_bytes() != (out / "manifest.jsonl").read_bytes()
    other = {e.video_id: e for e in read_manifest(tmp_path / "manifest.jsonl")}
    ours = {e.video_id: e for e in read_manifest(out / "manifest.jsonl")}
    assert other.keys() == ours.keys()
    assert sum(other[k].captions != ours[k].captions for k in ours) > len(ours) // 2


def test_captions_mention_ground_truth(entries):
    for e in entries:
        domain = synth.DOMAINS[e.extra["domain"]]
        for caption, mentions in zip(e.captions, e.extra["caption_mentions"]):
            assert caption == caption.strip().lower()
            assert _phrases_in(caption, domain.shape_words[e.extra["shape"]]), (caption, e.extra["shape"])
            assert _phrases_in(caption, domain.colour_words[e.extra["colour"]]), (caption, e.extra["colour"])
            assert _phrases_in(caption, domain.size_words[e.extra["size"]]), (caption, e.extra["size"])
            action_phrases = [p for pair in domain.action_words[e.extra["action"]] for p in pair]
            assert _phrases_in(caption, action_phrases), (caption, e.extra["action"])
            # No caption names another shape of the vocabulary (e.g. a distractor's); the action
            # phrase is cut out first ("moves in a circle" is about the path, not the shape).
            rest = caption
            for phrase in sorted(_phrases_in(caption, action_phrases), key=len, reverse=True):
                rest = rest.replace(phrase, " ")
            for shape, words in domain.shape_words.items():
                if shape != e.extra["shape"]:
                    assert not _phrases_in(rest, words), (caption, shape)
            mentions_background = bool(_phrases_in(caption, domain.background_words[e.extra["background"]]))
            assert mentions_background == ("background" in mentions), caption
            assert mentions[:4] == ["shape", "colour", "size", "action"]


def test_domain_b_uses_reserved_wording_and_rendering(entries):
    a_captions = [c for e in entries if e.extra["domain"] == "A" for c in e.captions]
    b_captions = [c for e in entries if e.extra["domain"] == "B" for c in e.captions]
    assert len(b_captions) == NUM_PER_SPLIT * synth.CAPTIONS_PER_VIDEO
    for caption in b_captions:
        assert any(marker in caption for marker in synth.DOMAIN_B_MARKERS), caption
    for caption in a_captions:
        assert not any(marker in caption for marker in synth.DOMAIN_B_MARKERS), caption
    # Action wording is entirely reserved; other attributes keep the plain word plus a new synonym.
    a, b = synth.DOMAIN_A, synth.DOMAIN_B
    for action in synth.ACTIONS:
        assert not set(a.action_words[action]) & set(b.action_words[action])
    for table in ("shape_words", "colour_words", "size_words"):
        a_words = {w for words in getattr(a, table).values() for w in words}
        for words in getattr(b, table).values():
            assert set(words) - a_words, (table, words)
    # Rendering shift: other backgrounds, shades and radii.
    assert not set(a.backgrounds) & set(b.backgrounds)
    assert all(a.palette[c] != b.palette[c] for c in synth.COLOURS)
    assert all(a.size_radius[s] != b.size_radius[s] for s in synth.SIZES)
    for e in entries:
        assert e.extra["background"] in synth.DOMAINS[e.extra["domain"]].backgrounds
        for d in e.extra["distractors"]:
            assert (d["shape"], d["colour"]) != (e.extra["shape"], e.extra["colour"])
        assert not (e.extra["action"] == "rotate" and e.extra["shape"] in ("circle", "ring"))


def test_concept_file(bench):
    out, _ = bench
    shipped = synth.concepts_path()
    labels = parse_labels(shipped.read_text(encoding="utf-8"), str(shipped))  # raises on blanks/duplicates
    assert 40 <= len(labels) <= 60
    assert all(label == label.strip() for label in labels)
    assert shipped.read_text(encoding="utf-8").endswith("\n")
    assert (out / "concepts.txt").read_bytes() == shipped.read_bytes()


def _brute_force_t2v_ceiling(entries: list[ManifestEntry]) -> float:
    values = []
    for e in entries:
        for mentions in e.extra["caption_mentions"]:
            matches = sum(all(o.extra[a] == e.extra[a] for a in mentions) for o in entries)
            values.append(1.0 / matches)
    return float(np.mean(values))


def test_benchmark_json_chance_and_ceiling(bench, entries):
    out, summary = bench
    info = json.loads((out / "benchmark.json").read_text())
    assert info["seed"] == 0 and info["generator_version"] == synth.GENERATOR_VERSION
    assert info["video"]["num_frames"] == NUM_FRAMES and info["video"]["size"] == SIZE
    for split in synth.SPLITS:
        split_info = info["splits"][split]
        assert split_info["num_videos"] == NUM_PER_SPLIT
        assert split_info["domain"] == synth.SPLIT_DOMAIN[split]
        assert split_info["chance"]["t2v/R@1"] == pytest.approx(1 / NUM_PER_SPLIT, abs=1e-6)
        assert split_info["chance"]["v2t/R@1"] == pytest.approx(1 / NUM_PER_SPLIT, abs=1e-6)
        expected = _brute_force_t2v_ceiling([e for e in entries if e.split == split])
        assert split_info["ceiling"]["t2v/R@1"] == pytest.approx(expected, abs=1e-6)
        assert split_info["ceiling"]["t2v/R@1"] <= split_info["ceiling"]["t2v/R@5"] <= 1.0
        assert summary["ceiling"][split] == split_info["ceiling"]


def _entry(video_id: str, shape: str, captions: int = 5, background_on: tuple[int, ...] = ()) -> ManifestEntry:
    base = ["shape", "colour", "size", "action"]
    mentions = [base + ["background"] if i in background_on else base for i in range(captions)]
    return ManifestEntry(
        video_id=video_id, video=f"{video_id}.mp4", captions=[f"caption {i}" for i in range(captions)], split="test",
        extra={"shape": shape, "colour": "red", "size": "small", "action": "stay", "background": video_id,
               "caption_mentions": mentions},
    )


def test_retrieval_ceiling_counts_collisions():
    # Three videos share every caption-visible attribute, a fourth is unique.
    entries = [_entry("a", "circle"), _entry("b", "circle"), _entry("c", "circle"), _entry("d", "star")]
    figures = synth.retrieval_ceiling(entries)
    assert figures["ceiling/t2v/R@1"] == pytest.approx((15 * (1 / 3) + 5 * 1.0) / 20)
    assert figures["ceiling/t2v/R@5"] == pytest.approx(1.0)
    # A colliding video fits 15 tied captions, 5 of them its own.
    assert figures["ceiling/v2t/R@1"] == pytest.approx((3 * (5 / 15) + 1.0) / 4)
    assert figures["chance/t2v/R@1"] == pytest.approx(1 / 4)
    assert figures["chance/v2t/R@1"] == pytest.approx(5 / 20)
    assert figures["unique_caption_attributes"] == 2
    # A caption that names the (distinct) background singles its video out.
    entries[0] = _entry("a", "circle", background_on=(0,))
    assert synth.retrieval_ceiling(entries)["ceiling/t2v/R@1"] == pytest.approx((1.0 + 14 * (1 / 3) + 5) / 20)


@pytest.mark.parametrize(
    "action, check",
    [
        ("move_left", lambda xs, ys, areas: xs[-1] < xs[0] - 10 and abs(ys[-1] - ys[0]) < 1),
        ("move_right", lambda xs, ys, areas: xs[-1] > xs[0] + 10 and abs(ys[-1] - ys[0]) < 1),
        ("move_up", lambda xs, ys, areas: ys[-1] < ys[0] - 10 and abs(xs[-1] - xs[0]) < 1),
        ("move_down", lambda xs, ys, areas: ys[-1] > ys[0] + 10 and abs(xs[-1] - xs[0]) < 1),
        ("grow", lambda xs, ys, areas: areas[-1] > 2 * areas[0]),
        ("shrink", lambda xs, ys, areas: areas[-1] < 0.5 * areas[0]),
        ("stay", lambda xs, ys, areas: np.ptp(xs) < 0.5 and np.ptp(ys) < 0.5 and np.ptp(areas) < 0.05 * areas[0]),
        ("blink", lambda xs, ys, areas: min(areas) == 0 and max(areas) > 0),
    ],
)
def test_rendered_action_matches_its_label(action, check):
    size, num_frames = 96, 12
    scene = {"shape": "square", "colour": "red", "size": "medium", "action": action, "radius_px": 12.0,
             "background": "plain", "distractors": []}
    frames = synth._render_frames(scene, np.random.default_rng(0), synth.DOMAIN_A, size, num_frames)
    assert frames.shape == (num_frames, size, size, 3) and frames.dtype == np.uint8
    red = (frames[..., 0].astype(int) - frames[..., 1].astype(int)) > 100
    areas = red.sum(axis=(1, 2)).astype(float)
    ys = np.array([np.nonzero(m)[0].mean() if m.any() else np.nan for m in red])
    xs = np.array([np.nonzero(m)[1].mean() if m.any() else np.nan for m in red])
    assert check(xs, ys, areas)


def test_refuses_to_overwrite_and_validates_arguments(bench, tmp_path):
    out, _ = bench
    with pytest.raises(CalmcapError, match="--overwrite"):
        synth.generate_benchmark(out, workers=0, **TINY)
    with pytest.raises(ConfigError, match="size"):
        synth.generate_benchmark(tmp_path, **{**TINY, "size": 63})
    with pytest.raises(ConfigError, match="num_test"):
        synth.generate_benchmark(tmp_path, **{**TINY, "num_test": -1})


def test_main_cli(tmp_path, capsys):
    argv = [str(tmp_path / "b"), "--num-train", "2", "--num-val", "1", "--num-test", "2", "--num-test-ood", "2",
            "--num-frames", "4", "--size", "48", "--workers", "0", "--seed", "3", "--no-progress"]
    assert synth.main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 7 videos" in printed and "test_ood" in printed
    assert Counter(e.split for e in read_manifest(tmp_path / "b" / "manifest.jsonl")) == {
        "train": 2, "val": 1, "test": 2, "test_ood": 2}
    # --overwrite replaces the videos of an earlier run.
    assert synth.main(argv[:2] + ["1"] + argv[3:] + ["--overwrite"]) == 0
    assert len(list((tmp_path / "b" / "videos" / "train").glob("*.mp4"))) == 1
