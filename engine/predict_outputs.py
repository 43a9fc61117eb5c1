"""What ``predict.py`` writes per photograph: a row of predictions.csv (its columns and statuses,
flushed per photograph), the evidence panel, thumbnail and SR image, and a row of report.html.

Text cells of predictions.csv that a spreadsheet would run as a formula (starting with ``=``,
``+``, ``-``, ``@``, tab or carriage return; OWASP's "CSV injection") are written with a leading
``'``, which spreadsheets show as text; a cell that itself starts with ``'`` gets one too, so
:func:`restore_cell` (drop one leading ``'``) gives the original text back. report.html escapes
every file name (``html.escape``, evaluation/html_report.py).
"""

from __future__ import annotations

import csv
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from data.records import GRADE_NAMES, LESIONS
from evaluation.evidence import draw_panel, panel_title
from evaluation.formatting import format_number
from evaluation.html_report import PredictionReport

if TYPE_CHECKING:
    from engine.predictor import PredictSettings

STATUSES = ("ok", "ungradable", "unreadable", "empty", "too_large", "missing")
# What --resume does not grade again: a photograph graded, or one whose file says it never will be.
# A missing file may yet arrive (a folder still being copied), so it is tried again.
FINAL_STATUSES = frozenset(STATUSES) - {"missing"}
# predictions.csv's text columns; the others hold numbers, which a spreadsheet never runs.
TEXT_COLUMNS = ("path", "reason", "flags", "grade_name", "panel", "sr")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(text: str) -> str:
    """``text`` as a spreadsheet shows it: a leading ``'`` before a formula start (= + - @ tab CR)
    or a ``'`` (so that the quote is reversible)."""
    return "'" + text if text.startswith((*FORMULA_STARTS, "'")) else text


def restore_cell(text: str) -> str:
    """The text :func:`neutralise_cell` was given."""
    return text[1:] if text.startswith("'") else text


def csv_columns(num_classes: int) -> list[str]:
    """predictions.csv's header: path, status, grade, p0.., p_referable first (docs/USAGE.md
    describes each column)."""
    return [
        "path",
        "status",
        "grade",
        *[f"p{c}" for c in range(num_classes)],
        "p_referable",
        "referable",
        *[f"area_{name}" for name in LESIONS],
        "flags",
        "reason",
        "grade_name",
        "reference_grade",
        "luminance",
        "saturated",
        "sharpness",
        "fov_fraction",
        "fov_side",
        "width",
        "height",
        "seconds",
        "panel",
        "sr",
    ]


def safe_stem(path: str) -> str:
    """A file name's stem as a name for its panel and thumbnail: safe characters, 60 at most."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"


def _quality_cells(quality, item: dict) -> dict:
    """The quality measures' cells of a photograph that was read."""
    return {
        "luminance": format_number(quality.luminance, ".2f"),
        "saturated": format_number(quality.saturated, ".4f"),
        "sharpness": format_number(quality.sharpness, ".3f"),
        "fov_fraction": format_number(quality.fov_fraction, ".4f"),
        "fov_side": quality.fov_side,
        "width": item["width"],
        "height": item["height"],
    }


class PredictionOutputs:
    """predictions.csv (a row flushed per photograph), panels, thumbnails, SR images and the report."""

    def __init__(
        self,
        out: Path,
        num_classes: int,
        settings: PredictSettings,
        report: PredictionReport,
        kept: Path | None = None,
    ) -> None:
        """``kept``: a CSV of an earlier run's rows (same columns) that become the first rows here."""
        self.out, self.settings, self.num_classes = out, settings, num_classes
        self.columns = csv_columns(num_classes)
        self.report = report
        path = out / "predictions.csv"
        if kept is None:
            self.file = path.open("w", newline="", encoding="utf-8")
            self.writer = csv.DictWriter(self.file, self.columns)
            self.writer.writeheader()
        else:
            os.replace(kept, path)
            self.file = path.open("a", newline="", encoding="utf-8")
            self.writer = csv.DictWriter(self.file, self.columns)

    def write(self, item: dict, result: dict | None, row_index: int, extra_seconds: float) -> str:
        """Write everything of one photograph; returns its status."""
        started = time.perf_counter()
        quality = item.get("quality")
        flags = list(quality.flags) if quality is not None else []
        status, reason = item["status"], item["reason"]
        if status == "ok" and result is None:
            status, reason = "ungradable", "quality flags: " + ", ".join(flags)
        stem = f"{item['index'] + 1:05d}_{safe_stem(item['path'])}"
        reference = item["reference_grade"] if item["reference_grade"] >= 0 else None
        row: dict = {
            "path": item["path"],
            "status": status,
            "reason": reason,
            "flags": ";".join(flags),
            "reference_grade": "" if reference is None else reference,
        }
        if quality is not None:
            row.update(_quality_cells(quality, item))
        thumbnail = None
        if "thumbnail" in item:
            thumbnail = f"thumbs/{stem}.jpg"
            Image.fromarray(item["thumbnail"]).save(self.out / thumbnail, quality=85)
        graded = {}
        if result is not None:
            graded = self._graded(item, result, row_index, stem, flags, reference, row)
        row["seconds"] = format_number(
            item.get("seconds", 0.0) + extra_seconds + time.perf_counter() - started, ".3f"
        )
        self.writer.writerow(
            {
                key: neutralise_cell(value)
                if key in TEXT_COLUMNS and isinstance(value, str)
                else value
                for key, value in row.items()
            }
        )
        self.file.flush()
        self.report.add(
            {
                "index": item["index"],
                "path": item["path"],
                "status": status,
                "reason": reason,
                "grade": graded.get("grade"),
                "probabilities": graded.get("probabilities"),
                "p_referable": graded.get("p_referable"),
                "flags": flags,
                "areas": graded.get("areas"),
                "reference_grade": reference,
                "thumbnail": thumbnail,
                "panel": graded.get("panel"),
            }
        )
        return status

    def _graded(
        self,
        item: dict,
        result: dict,
        row_index: int,
        stem: str,
        flags: list[str],
        reference: int | None,
        row: dict,
    ) -> dict:
        """Fill ``row`` with a graded photograph's cells, draw its panel and save its SR image;
        returns ``grade``, ``probabilities``, ``p_referable``, ``areas`` and ``panel`` for the report."""
        probabilities = result["probabilities"][row_index].tolist()
        grade = int(result["grades"][row_index])
        referable = float(result["p_referable"][row_index])
        row["referable"] = int(result["referable"][row_index])
        areas = result["areas"][row_index].tolist() if result["areas"].shape[1] else None
        row.update(
            grade=grade,
            grade_name=GRADE_NAMES[grade] if grade < len(GRADE_NAMES) else "",
            p_referable=format_number(referable, ".5f"),
            **{f"p{c}": format_number(p, ".5f") for c, p in enumerate(probabilities)},
        )
        if areas is not None:
            row.update({f"area_{name}": format_number(a, ".6f") for name, a in zip(LESIONS, areas)})
        image = result["image"][row_index]
        panel = None
        if self.settings.panels:
            panel = f"panels/{stem}.png"
            title = panel_title(
                Path(item["path"]).name, grade, probabilities, referable, flags, reference
            )
            self._draw_panel(self.out / panel, item, result, row_index, title, grade, areas)
            row["panel"] = panel
        if self.settings.save_sr and "lr" in result:
            row["sr"] = f"sr/{stem}.png"
            array = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            Image.fromarray(array).save(self.out / row["sr"], compress_level=3)
        return {
            "grade": grade,
            "probabilities": probabilities,
            "p_referable": referable,
            "areas": areas,
            "panel": panel,
        }

    @staticmethod
    def _draw_panel(
        path: Path,
        item: dict,
        result: dict,
        row_index: int,
        title: str,
        grade: int,
        areas: list[float] | None,
    ) -> None:
        image = result["image"][row_index]
        lesions = result["lesions"][row_index].numpy()
        draw_panel(
            path,
            item["thumbnail"],
            image.numpy(),
            lesions if len(lesions) else np.zeros((4, *image.shape[-2:])),
            result["cam"][row_index].numpy() if "cam" in result else None,
            title,
            lr=result["lr"][row_index].numpy() if "lr" in result else None,
            lesion_areas=areas,
            cam_grade=grade,
        )

    def close(self) -> Path:
        self.file.close()
        return self.report.close()
