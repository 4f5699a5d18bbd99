"""Tests of the embedded benchmark generator (calmcap.data.synth): tiny sizes, CPU, offline."""

from __future__ import annotations

import json
import math
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
            num_test_ood_visual=NUM_PER_SPLIT, num_test_ood_text=NUM_PER_SPLIT,
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
        assert (e.extra["domain"], e.extra["wording_domain"]) == synth.SPLIT_DOMAINS[e.split]
        assert e.extra["domain"] == synth.SPLIT_DOMAIN[e.split]  # the rendering domain, as before
        assert e.video == f"videos/{e.split}/{e.video_id}.mp4"
        assert len(e.captions) == synth.CAPTIONS_PER_VIDEO
        assert len(set(e.captions)) == len(e.captions), "paraphrases of one video must differ"
    assert synth.SPLIT_DOMAINS == {"train": ("A", "A"), "val": ("A", "A"), "test": ("A", "A"), "test_ood": ("B", "B"),
                                   "test_ood_visual": ("B", "A"), "test_ood_text": ("A", "B")}
    assert set(synth.SPLIT_DOMAINS) == set(synth.SPLITS)


def test_split_codes_are_stable_and_distinct():
    # Existing codes never move (they seed every video); the new splits take 6 and 7, after the
    # pretraining corpus's 4 and 5.
    assert synth._SPLIT_CODE == {"train": 0, "val": 1, "test": 2, "test_ood": 3, "pretrain": 4, "pretrain_val": 5,
                                 "test_ood_visual": 6, "test_ood_text": 7}
    assert synth.GENERATOR_VERSION == 2


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
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name], "no temporary files may be left behind"


def test_same_seed_gives_identical_output_and_worker_count_does_not_matter(bench, bench_two_workers):
    out, _ = bench
    for name in ("manifest.jsonl", "benchmark.json", "concepts.txt"):
        assert (out / name).read_bytes() == (bench_two_workers / name).read_bytes(), name
    videos = sorted(p.relative_to(out) for p in (out / "videos").rglob("*.mp4"))
    assert len(videos) == len(synth.SPLITS) * NUM_PER_SPLIT
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
        domain = synth.DOMAINS[e.extra["wording_domain"]]  # the words come from the wording domain
        for caption, mentions in zip(e.captions, e.extra["caption_mentions"], strict=True):
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
            mentions_background = bool(_phrases_in(caption, domain.background_phrases(e.extra["background"])))
            assert mentions_background == ("background" in mentions), caption
            assert mentions[:4] == ["shape", "colour", "size", "action"]


def test_domain_b_uses_reserved_wording_and_rendering(entries):
    a_captions = [c for e in entries if e.extra["wording_domain"] == "A" for c in e.captions]
    b_captions = [c for e in entries if e.extra["wording_domain"] == "B" for c in e.captions]
    assert len(b_captions) == 2 * NUM_PER_SPLIT * synth.CAPTIONS_PER_VIDEO  # test_ood, test_ood_text
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
        assert len(e.extra["distractors"]) in synth.DOMAINS[e.extra["domain"]].distractor_counts
        for d in e.extra["distractors"]:
            assert (d["shape"], d["colour"]) != (e.extra["shape"], e.extra["colour"])
        assert not (e.extra["action"] == "rotate" and e.extra["shape"] in ("circle", "ring"))


def _split_entries(entries: list[ManifestEntry], split: str) -> list[ManifestEntry]:
    chosen = [e for e in entries if e.split == split]
    assert len(chosen) == NUM_PER_SPLIT
    return chosen


def _radius_fraction_fits(e: ManifestEntry, domain: synth.DomainSpec) -> bool:
    # Radii are drawn within +-6 % of the rendering domain's radius for the size word.
    return abs(e.extra["radius_px"] / SIZE / domain.size_radius[e.extra["size"]] - 1) <= 0.06 + 1e-3


def test_ood_text_shifts_the_wording_alone(entries):
    for e in _split_entries(entries, "test_ood_text"):
        assert e.extra["domain"] == "A" and e.extra["wording_domain"] == "B"
        assert e.extra["background"] in synth.DOMAIN_A.backgrounds
        assert len(e.extra["distractors"]) in synth.DOMAIN_A.distractor_counts
        assert _radius_fraction_fits(e, synth.DOMAIN_A)
        for caption in e.captions:
            assert any(marker in caption for marker in synth.DOMAIN_B_MARKERS), caption
            # Every action phrase of domain B is reserved: the caption's action is B's.
            b_actions = [p for pair in synth.DOMAIN_B.action_words[e.extra["action"]] for p in pair]
            assert _phrases_in(caption, b_actions), caption


def test_ood_visual_shifts_the_rendering_alone(bench, entries):
    out, _ = bench
    for e in _split_entries(entries, "test_ood_visual"):
        assert e.extra["domain"] == "B" and e.extra["wording_domain"] == "A"
        assert e.extra["background"] in synth.DOMAIN_B.backgrounds
        assert len(e.extra["distractors"]) in synth.DOMAIN_B.distractor_counts
        assert _radius_fraction_fits(e, synth.DOMAIN_B)
        for caption in e.captions:
            assert not any(marker in caption for marker in synth.DOMAIN_B_MARKERS), caption
            a_actions = [p for pair in synth.DOMAIN_A.action_words[e.extra["action"]] for p in pair]
            assert _phrases_in(caption, a_actions), caption
    # The pixels are domain B's: re-rendering the recorded scene with B's palette and tones
    # reproduces the first frame of the file (up to the H.264 loss), A's does not.
    av = pytest.importorskip("av")
    e = _split_entries(entries, "test_ood_visual")[0]
    with av.open(str(out / e.video)) as container:
        first = next(container.decode(container.streams.video[0])).to_ndarray(format="rgb24").astype(float)

    def render(domain: synth.DomainSpec) -> np.ndarray:
        rng = synth.video_rng(0, "test_ood_visual", 0)
        scene = synth._sample_scene(rng, synth.DOMAIN_B, SIZE)
        synth._make_captions(rng, synth.DOMAIN_A, scene, synth.CAPTIONS_PER_VIDEO)
        return synth._render_frames(scene, rng, domain, SIZE, NUM_FRAMES)[0].astype(float)

    assert e.video_id == "test_ood_visual_00000"
    assert np.abs(render(synth.DOMAIN_B) - first).mean() < 3
    assert np.abs(render(synth.DOMAIN_A) - first).mean() > 3 * np.abs(render(synth.DOMAIN_B) - first).mean()


def test_mixed_splits_name_every_background_in_their_own_wording():
    for wording, rendering in ((synth.DOMAIN_A, synth.DOMAIN_B), (synth.DOMAIN_B, synth.DOMAIN_A)):
        for background in rendering.backgrounds:
            phrases = wording.background_phrases(background)
            assert phrases and not set(phrases) & set(rendering.background_words[background])
            assert not any(marker in p for p in phrases for marker in synth.DOMAIN_B_MARKERS)


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
        assert split_info["num_captions"] == NUM_PER_SPLIT * synth.CAPTIONS_PER_VIDEO
        assert (split_info["domain"], split_info["wording_domain"]) == synth.SPLIT_DOMAINS[split]
        # Chance: a caption's one video among N; a video's best of its 5 captions among 5N
        # (1/N at R@1, the hypergeometric complement at R@K).
        num_captions = NUM_PER_SPLIT * synth.CAPTIONS_PER_VIDEO
        for k in (1, 5, 10):
            miss = math.comb(num_captions - synth.CAPTIONS_PER_VIDEO, k) / math.comb(num_captions, k)
            assert split_info["chance"][f"t2v/R@{k}"] == pytest.approx(min(1.0, k / NUM_PER_SPLIT), abs=1e-6)
            assert split_info["chance"][f"v2t/R@{k}"] == pytest.approx(1 - miss, abs=1e-6)
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
    with pytest.raises(ConfigError, match="num_test_ood_text"):
        synth.generate_benchmark(tmp_path, **{**TINY, "num_test_ood_text": -1})


def test_synth_cli(tmp_path, capsys):
    from calmcap.cli import main

    argv = ["synth", str(tmp_path / "b"), "--num-train", "2", "--num-val", "1", "--num-test", "2",
            "--num-test-ood", "2", "--num-test-ood-visual", "1", "--num-test-ood-text", "3",
            "--num-frames", "4", "--size", "48", "--workers", "0", "--seed", "3", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "wrote 11 videos" in printed
    assert re.search(r"^test_ood_visual +B +A +1 ", printed, re.MULTILINE)
    assert re.search(r"^test_ood_text +A +B +3 ", printed, re.MULTILINE)
    assert Counter(e.split for e in read_manifest(tmp_path / "b" / "manifest.jsonl")) == {
        "train": 2, "val": 1, "test": 2, "test_ood": 2, "test_ood_visual": 1, "test_ood_text": 3}
    # --overwrite replaces the videos of an earlier run.
    assert main(argv[:3] + ["1"] + argv[4:] + ["--overwrite"]) == 0
    assert len(list((tmp_path / "b" / "videos" / "train").glob("*.mp4"))) == 1


def test_runs_as_a_script_through_the_cli():
    # `python -m calmcap.cli synth` (no console script needed); the library module itself has no
    # script entry, since that would make it import the CLI (issue #13).
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "calmcap.cli", "synth", "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: calmcap synth") and "--num-train" in result.stdout
