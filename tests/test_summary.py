"""python -m data.summary: the documented JSON object, the table, wrong roots and bad images."""

from __future__ import annotations

import json

from test_dataset_ddr import make_ddr
from test_dataset_idrid import make_idrid

from data.summary import main


def _json(capsys, argv) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    return json.loads(out)  # exactly one JSON object: anything else on stdout fails here


def test_idrid_summary_json_with_an_extra_nesting_level(tmp_path, capsys):
    make_idrid(tmp_path / "downloads" / "IDRiD")
    summary = _json(capsys, ["--dataset", "idrid", "--root", str(tmp_path), "--json"])
    zero = {str(grade): 0 for grade in range(5)}
    assert summary == {
        "dataset": "idrid",
        "parts": {
            "grading/test": {"n": 2, "grades": {**zero, "1": 1, "2": 1}, "ungradable": 0},
            "grading/train": {"n": 3, "grades": {**zero, "0": 1, "3": 1, "4": 1}, "ungradable": 0},
            "segmentation/test": {
                "n": 1,
                "grades": zero,
                "ungradable": 0,
                "masks": {"MA": 1, "HE": 1, "EX": 1, "SE": 1},
            },
            "segmentation/train": {
                "n": 2,
                "grades": zero,
                "ungradable": 0,
                "masks": {"MA": 2, "HE": 1, "EX": 2, "SE": 1},
            },
        },
    }


def test_ddr_summary_counts_ungradable_per_split(tmp_path, capsys):
    make_ddr(tmp_path)
    parts = _json(capsys, ["--dataset", "ddr", "--root", str(tmp_path), "--json"])["parts"]
    assert {key: (entry["n"], entry["ungradable"]) for key, entry in parts.items()} == {
        "grading/test": (1, 2),
        "grading/train": (3, 1),
        "grading/valid": (2, 0),
        "segmentation/test": (1, 0),
        "segmentation/train": (2, 0),
        "segmentation/valid": (1, 0),
    }
    assert parts["grading/train"]["grades"] == {"0": 1, "1": 0, "2": 1, "3": 0, "4": 1}
    assert "masks" not in parts["grading/train"] and parts["segmentation/train"]["masks"]["MA"] == 2


def test_table_output(tmp_path, capsys):
    make_idrid(tmp_path)
    assert main(["--dataset", "idrid", "--root", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dataset: idrid"
    assert lines[1].split()[:3] == ["part/split", "n", "grade"]
    row = next(line for line in lines if line.startswith("segmentation/train")).split()
    assert row[1] == "2" and row[-4:] == ["2", "1", "2", "1"]


def test_wrong_root_names_the_markers(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["--dataset", "idrid", "--root", str(tmp_path / "empty"), "--json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert (
        "Disease Grading" in captured.err
        and "Segmentation" in captured.err
        and len(captured.err.splitlines()) == 1
    )


def test_check_stops_at_a_truncated_image_or_skips_it(tmp_path, capsys):
    root = make_idrid(tmp_path)
    image = root / "B. Disease Grading" / "1. Original Images" / "a. Training Set" / "IDRiD_002.jpg"
    image.write_bytes(image.read_bytes()[:200])
    assert main(["--dataset", "idrid", "--root", str(root), "--json", "--check"]) == 2
    assert "IDRiD_002.jpg" in capsys.readouterr().err
    summary = _json(
        capsys, ["--dataset", "idrid", "--root", str(root), "--json", "--check", "--skip-bad"]
    )
    assert summary["parts"]["grading/train"]["n"] == 2
    assert summary["parts"]["grading/train"]["grades"]["0"] == 0
    assert [item["file"] for item in summary["skipped"]] == [str(image)]
