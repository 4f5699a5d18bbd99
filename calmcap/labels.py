"""Anchor label files: one label per line, shipped in ``calmcap/anchors`` or given by path."""

from __future__ import annotations

from pathlib import Path

from calmcap.config import ANCHOR_DIR
from calmcap.errors import ConfigError


def list_label_sets() -> list[str]:
    """Names of the label files shipped with calmcap (usable as ``anchors.label_set``)."""
    return sorted(p.stem for p in ANCHOR_DIR.glob("*.txt"))


def resolve_label_file(label_set: str) -> Path:
    """The file behind a label-set name (``charades_157``) or a path."""
    shipped = ANCHOR_DIR / f"{label_set}.txt"
    if shipped.is_file():
        return shipped
    path = Path(label_set).expanduser()
    if path.is_file():
        return path
    raise ConfigError(
        f"anchor label set {label_set!r} is neither a shipped set ({', '.join(list_label_sets())}) nor a file"
    )


def parse_labels(text: str, source: str = "<labels>") -> list[str]:
    """Labels from file contents; a blank or duplicate line is an error naming the line.

    Trailing blank lines at the end of the file are allowed (an editor's final newline).
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    labels: list[str] = []
    first_seen: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        label = line.strip()
        if not label:
            raise ConfigError(f"{source}:{number}: blank line in anchor label file")
        key = label.lower()
        if key in first_seen:
            raise ConfigError(f"{source}:{number}: duplicate anchor label {label!r} (first on line {first_seen[key]})")
        first_seen[key] = number
        labels.append(label)
    if not labels:
        raise ConfigError(f"{source}: anchor label file is empty")
    return labels


def load_labels(label_set: str, num_anchors: int | None = None) -> list[str]:
    """The first ``num_anchors`` labels (all when None; none when 0) of a label set."""
    if num_anchors == 0:
        return []
    path = resolve_label_file(label_set)
    labels = parse_labels(path.read_text(encoding="utf-8"), str(path))
    if num_anchors is not None:
        if num_anchors > len(labels):
            raise ConfigError(f"anchors.num_anchors={num_anchors} but {path} has only {len(labels)} labels")
        labels = labels[:num_anchors]
    return labels
