"""calmcap.atomic: a file or directory appears complete under its name, or not at all."""

from __future__ import annotations

import os

import pytest

from calmcap.atomic import atomic_path, atomic_write_bytes, atomic_write_text, temporary_name


def test_write_text_and_bytes_replace_the_file_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "report.json"
    assert atomic_write_text(target, "one\n") == target  # parent folders are made
    atomic_write_text(target, "two\n")
    assert target.read_text() == "two\n"
    atomic_write_bytes(tmp_path / "blob.bin", b"\x00\x01")
    assert (tmp_path / "blob.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blob.bin", "report.json", "sub"]


def test_temporary_names_are_hidden_unique_and_keep_the_suffix(tmp_path):
    a, b = temporary_name(tmp_path / "clip.mp4"), temporary_name(tmp_path / "clip.mp4")
    assert a != b and a.parent == tmp_path
    assert a.name.startswith(".clip.tmp-") and a.suffix == ".mp4" and f"-{os.getpid()}-" in a.name


def test_a_failed_write_keeps_the_old_content_and_removes_the_temporary(tmp_path):
    target = tmp_path / "manifest.jsonl"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.jsonl"]


def test_a_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "model"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
        (tmp / "old_only.txt").write_text("x")
    with atomic_path(target) as tmp:  # onto an existing, non-empty directory
        tmp.mkdir()
        (tmp / "config.json").write_text('{"v": 2}')
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]
    assert (target / "config.json").read_text() == '{"v": 2}'
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.mkdir()
        raise ValueError("no")
    assert (target / "config.json").read_text() == '{"v": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
