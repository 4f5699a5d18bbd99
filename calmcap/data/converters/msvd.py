"""MSVD (Chen & Dolan, ACL 2011) from the common UT Austin release.

Input: ``AllVideoDescriptions.txt`` (English descriptions; ``#`` header lines, then one
``<clip> <description...>`` per line, a clip on many lines) and ``youtube_mapping.txt``
(``<clip> vid<N>`` per line). Videos are ``YouTubeClips/<clip>.avi``.

Split: by the mapping's index, ``vid1``-``vid1200`` train, ``vid1201``-``vid1300`` val,
``vid1301``-``vid1970`` test. This is the split of Venugopalan et al. (S2VT, ICCV 2015) that
later work reuses for captioning and retrieval (collaborative-experts' ``train_list.txt`` /
``val_list.txt`` / ``test_list.txt`` with 1,200 / 100 / 670 clips, used by CLIP4Clip); the
mapping is in sorted clip-name order, so these index ranges are those lists. All references of a
clip are kept (about 41 per clip); CLIP4Clip evaluates retrieval with all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from calmcap.data.converters.base import ConversionResult, clean_captions, read_lines, warn_skipped
from calmcap.data.manifest import ManifestEntry
from calmcap.errors import ManifestError

DEFAULT_SPLIT_SIZES = (1200, 100, 670)


def _pick_files(annotations: Sequence[str | Path]) -> tuple[Path, Path]:
    """Tell the mapping file (``*mapping*``) from the descriptions file."""
    paths = [Path(p) for p in annotations]
    mappings = [p for p in paths if "mapping" in p.name.lower()]
    descriptions = [p for p in paths if p not in mappings]
    if len(mappings) != 1 or len(descriptions) != 1:
        raise ManifestError(
            "msvd: expected two annotation files, AllVideoDescriptions.txt and youtube_mapping.txt "
            f"(the mapping is recognised by 'mapping' in its name); got {', '.join(map(str, paths)) or 'none'}"
        )
    return descriptions[0], mappings[0]


def _read_mapping(path: Path) -> dict[str, int]:
    mapping: dict[str, int] = {}
    for line, text in read_lines(path):
        fields = text.split()
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].startswith("vid") or not fields[1][3:].isdigit():
            raise ManifestError(f"{path}:{line}: expected '<clip> vid<N>', got {text!r}")
        mapping[fields[0]] = int(fields[1][3:])
    if not mapping:
        raise ManifestError(f"{path}: no '<clip> vid<N>' lines")
    return mapping


def _read_descriptions(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """clip -> descriptions in file order, and the line numbers of lines without a description."""
    captions: dict[str, list[str]] = {}
    bare: list[str] = []
    for line, text in read_lines(path):
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        clip, _, description = text.strip().partition(" ")
        if not description.strip():
            bare.append(f"line {line}")
            continue
        captions.setdefault(clip, []).append(description)
    if not captions:
        raise ManifestError(f"{path}: no '<clip> <description>' lines")
    return captions, bare


def convert_msvd(
    annotations: Sequence[str | Path], *, split_sizes: Sequence[int] = DEFAULT_SPLIT_SIZES
) -> ConversionResult:
    """Convert MSVD; ``split_sizes`` = (train, val, test) counts over consecutive ``vid`` indices."""
    if len(split_sizes) != 3 or any(n < 0 for n in split_sizes):
        raise ManifestError(f"msvd: split_sizes must be three non-negative counts, got {list(split_sizes)}")
    descriptions_path, mapping_path = _pick_files(annotations)
    mapping = _read_mapping(mapping_path)
    captions, bare = _read_descriptions(descriptions_path)
    warn_skipped("description lines without text", bare, descriptions_path)

    n_train, n_val, n_test = split_sizes
    bounds = (("train", n_train), ("val", n_train + n_val), ("test", n_train + n_val + n_test))
    entries: list[ManifestEntry] = []
    unmapped = [clip for clip in captions if clip not in mapping]
    without_captions: list[str] = []
    beyond: list[str] = []
    for clip, index in sorted(mapping.items(), key=lambda item: item[1]):
        refs = clean_captions(captions.get(clip, []))
        if not refs:
            without_captions.append(clip)
            continue
        split = next((name for name, upper in bounds if index <= upper), None)
        if split is None:
            beyond.append(f"vid{index}")
            continue
        entries.append(ManifestEntry(clip, f"{clip}.avi", refs, split, extra={"vid": f"vid{index}"}))
    warn_skipped("described clips missing from the mapping", unmapped, descriptions_path)
    warn_skipped("mapped clips without descriptions", without_captions, mapping_path)
    warn_skipped(f"clips beyond the {sum(split_sizes)} of the split", beyond, mapping_path)
    conventions = [
        f"split by vid index: train vid1-{n_train}, val -{n_train + n_val}, test -{n_train + n_val + n_test} "
        "(Venugopalan et al., S2VT, ICCV 2015; collaborative-experts lists; CLIP4Clip)",
        "all English references per clip (CLIP4Clip multi-sentence evaluation)",
    ]
    return ConversionResult(
        "msvd", "standard", entries, {"split_sizes": list(split_sizes)}, conventions,
        [str(descriptions_path), str(mapping_path)],
    )
