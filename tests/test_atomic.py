"""data/atomic.py, the one atomic file writer, and evaluation/formatting.py, the one number format."""

from __future__ import annotations

import math
import os
import stat

import pytest

from data.atomic import atomic_open, atomic_path, write_atomic
from evaluation.formatting import format_number, json_safe, parse_number


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_written_file_has_the_umask_mode_and_no_temporary_is_left(tmp_path):
    before = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.bin", b"abc")
        with atomic_open(tmp_path / "b.txt", "w") as file:
            file.write("é\n")
        os.umask(0o027)
        write_atomic(tmp_path / "c.bin", b"")
    finally:
        os.umask(before)
    assert (tmp_path / "a.bin").read_bytes() == b"abc"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "é\n"
    # open()'s mode, not mkstemp's 0600: a release or report is readable by its other users
    assert (_mode(tmp_path / "a.bin"), _mode(tmp_path / "c.bin")) == (0o644, 0o640)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.txt", "c.bin"]


def test_a_failed_write_keeps_the_previous_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "results.csv"
    write_atomic(target, b"old\n")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_path(target) as temp:
            temp.write_bytes(b"half")
            # both clean-ups of killed writers match the temporary's name
            assert temp.match(".*.tmp") and temp.match(".*.tmp-*") and temp.parent == tmp_path
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv"]


def test_a_writer_may_replace_the_temporary_it_is_given(tmp_path):
    with atomic_path(tmp_path / "w.bin", sync_folder=True) as temp:
        temp.unlink()
        temp.write_bytes(b"new")  # as a library that writes its own file at a path does
    assert (tmp_path / "w.bin").read_bytes() == b"new"


def test_numbers_print_with_their_spec_and_the_missing_text_where_undefined():
    assert format_number(0.123456, ".4f") == "0.1235"
    assert format_number(3, ".2f", "n/a") == "3.00"
    assert format_number(-0.5, "+.3f") == "-0.500"
    assert format_number(None, ".4f", "n/a") == "n/a"
    assert format_number(math.nan, ".6g") == ""
    assert format_number(math.nan, "+.3f", missing="undefined") == "undefined"
    assert [parse_number(text) for text in ("", None, "nan", "0.25")] == [None, None, None, 0.25]
    assert json_safe({1: [math.inf, 0.5, (math.nan,)]}) == {"1": [None, 0.5, [None]]}
