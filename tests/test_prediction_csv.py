"""The one reader of test.py's and predict.py's predictions CSVs (evaluation/prediction_csv.py):
``grade`` means the reference in one and the model's grade in the other."""

import csv

import numpy as np
import pytest

from data.records import DataError
from evaluation.prediction_csv import probability_columns, read_graded


def _write(path, header, rows):
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_probability_columns_are_in_class_order_without_the_referable_score():
    header = ["id", "p10", "p2", "p_referable", "p0", "p1", "path", "p"]
    assert probability_columns(header) == ["p0", "p1", "p2", "p10"]


def test_test_py_rows_read_grade_as_the_reference_and_predicted_as_the_model(tmp_path):
    path = _write(
        tmp_path / "predictions_val.csv",
        ["id", "grade", "predicted", "p1", "p0", "p_referable", "referable"],
        [["a", 2, 0, "0.25", "0.75", "0.0", 0], ["b", -1, 1, "0.9", "0.1", "0.0", 0]],
    )
    rows = read_graded(path)
    assert rows.keys == ["a", "b"]
    np.testing.assert_array_equal(rows.reference, [2, -1])
    np.testing.assert_array_equal(rows.predicted, [0, 1])
    np.testing.assert_allclose(rows.probs, [[0.75, 0.25], [0.1, 0.9]])  # p0 first
    known = rows.with_reference()
    assert known.keys == ["a"] and known.reference.tolist() == [2] and known.probs.shape == (1, 2)


def test_predict_py_rows_read_grade_as_the_model_and_skip_ungraded_photographs(tmp_path):
    header = ["path", "status", "grade", "p0", "p1", "p_referable", "reason", "reference_grade"]
    path = _write(
        tmp_path / "predictions.csv",
        header,
        [
            ["x.jpg", "ok", 1, "0.2", "0.8", "0.0", "", 0],
            ["y.jpg", "unreadable", "", "", "", "", "not an image", 1],
            ["z.jpg", "ok", 0, "0.6", "0.4", "0.0", "", ""],
        ],
    )
    rows = read_graded(path)
    assert rows.keys == ["x.jpg", "z.jpg"]
    assert rows.predicted.tolist() == [1, 0] and rows.reference.tolist() == [0, -1]
    assert rows.with_reference().keys == ["x.jpg"]


def test_a_file_of_neither_kind_and_a_bad_cell_name_the_file_and_line(tmp_path):
    with pytest.raises(DataError, match=r"other\.csv: not a predictions CSV"):
        read_graded(_write(tmp_path / "other.csv", ["id", "grade", "score"], [["a", 1, 0.5]]))
    bad = _write(
        tmp_path / "bad.csv",
        ["id", "grade", "predicted", "p0", "p1"],
        [["a", 0, 0, "1.0", "0.0"], ["b", 1, 1, "oops", "0.5"]],
    )
    with pytest.raises(DataError, match=r"bad\.csv, line 3"):
        read_graded(bad)
    with pytest.raises(DataError, match=r"missing\.csv"):
        read_graded(tmp_path / "missing.csv")


def test_an_empty_file_reads_as_zero_rows_with_the_header_width(tmp_path):
    rows = read_graded(_write(tmp_path / "empty.csv", ["id", "grade", "predicted", "p0"], []))
    assert rows.keys == [] and rows.probs.shape == (0, 1)
