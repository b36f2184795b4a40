"""gpucnn.atomic: complete files only, ordinary permissions, nothing left behind on error."""

import os

import pytest

from gpucnn.atomic import atomic_open, atomic_path, file_mode, write_text_atomic


def test_written_file_has_umask_permissions_and_no_temp_left(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_open(target, "wb") as handle:
        handle.write(b"abc")
    assert target.read_bytes() == b"abc"
    assert os.stat(target).st_mode & 0o777 == file_mode()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_error_inside_block_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "config.toml"
    write_text_atomic(target, "old = 1\n")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_open(target, "w") as handle:
            handle.write("new = ")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old = 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.toml"]


def test_atomic_path_keeps_the_suffix_for_format_sniffing_writers(tmp_path):
    with atomic_path(tmp_path / "plot.png", suffix=".png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"


def test_write_text_atomic_creates_the_folder(tmp_path):
    write_text_atomic(tmp_path / "a" / "b" / "m.jsonl", "{}\n")
    assert (tmp_path / "a" / "b" / "m.jsonl").read_text() == "{}\n"
