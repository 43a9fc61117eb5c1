"""The HTML reports: test.py's ``report.html`` (:func:`write_test_report`, every table and figure
in one file) and predict.py's (:class:`PredictionReport`, written as rows arrive). One file each,
no network, readable without JavaScript (a small inline script only adds click-to-sort on the
prediction table and marks images that fail to load). Numbers print with
``evaluation.formatting.format_number`` (``n/a`` where undefined).
"""

from __future__ import annotations

import base64
import html
import shutil
from collections.abc import Sequence
from pathlib import Path

from data.atomic import atomic_open
from data.records import GRADE_NAMES, LESIONS
from evaluation.formatting import format_number
from evaluation.referable import REFERABLE_GRADE, is_referable, model_threshold

NA = "n/a"  # an undefined number in a report

REPORT_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #f2f2f2; } th[data-sortable] { cursor: pointer; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { background: #fff6d6; border: 1px solid #e6c200; padding: 0.5em 0.8em; max-width: 60em; }
.ok { color: #17692a; font-weight: 600; } .ungradable { color: #a85f00; font-weight: 600; } .skipped { color: #b00020; font-weight: 600; }
.bar { display: inline-block; width: 80px; height: 10px; background: #eee; margin-right: 6px; vertical-align: middle; }
.bar span { display: block; height: 100%; background: #c0392b; }
img.thumb { width: 128px; height: auto; display: block; }
td.file { max-width: 18em; word-break: break-all; font-size: 0.9em; }
img.missing { outline: 3px solid #b00020; }
img.figure { max-width: 100%; height: auto; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.facts dt { font-weight: 600; } dl.facts dd { margin: 0; font-family: ui-monospace, monospace; font-size: 0.9em; }
"""

SORT_SCRIPT = """
document.querySelectorAll("img").forEach(function (img) {
  function missing() { img.classList.add("missing"); img.alt = "image missing: " + img.getAttribute("src"); }
  if (img.complete && img.naturalWidth === 0) { missing(); } else { img.addEventListener("error", missing); }
});
document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th[data-sortable]").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      var index = Array.prototype.indexOf.call(th.parentNode.children, th);
      var ascending = th.dataset.order !== "asc";
      th.dataset.order = ascending ? "asc" : "desc";
      rows.sort(function (a, b) {
        var x = a.cells[index].dataset.sort, y = b.cells[index].dataset.sort;
        var nx = parseFloat(x), ny = parseFloat(y);
        var order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : String(x).localeCompare(String(y));
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
"""


def _page_head(title: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{REPORT_STYLE}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
    )


def _page_tail() -> str:
    return f"<script>{SORT_SCRIPT}</script>\n</body>\n</html>\n"


def _facts(facts: Sequence[tuple[str, object]]) -> str:
    items = "".join(
        f"<dt>{html.escape(str(k))}</dt><dd>{html.escape(str(v))}</dd>"
        for k, v in facts
        if v is not None
    )
    return f'<dl class="facts">{items}</dl>\n'


def _html_table(
    header: Sequence[str], rows: Sequence[Sequence[object]], css_class: str = ""
) -> str:
    head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{html.escape(str(c))}</td>'
            if i
            else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>\n"
        for row in rows
    )
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>\n'


def _data_uri(path: str | Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


GRADE_LABELS = dict(enumerate(GRADE_NAMES))
DISCLAIMER = (
    "Research software: these outputs are not a diagnosis and must not be used for clinical decisions. "
    "Grades follow the ICDR scale (0 none, 1 mild, 2 moderate, 3 severe, 4 proliferative); referable DR means grade 2 or worse."
)


TEST_FACTS = (
    "checkpoint",
    "method",
    "stage",
    "epoch",
    "dataset",
    "split",
    "input",
    "hr_size",
    "scale",
)


def _grading_section(grading: dict) -> list[str]:
    """Scalar grading metrics, then the confusion matrix."""
    labels = [
        ("n", "n"),
        ("accuracy", "accuracy"),
        ("QWK", "qwk"),
        ("macro F1", "macro_f1"),
        ("macro AUC", "macro_auc"),
        ("referable AUC", "referable_auc"),
        ("referable sensitivity", "referable_sensitivity"),
        ("referable specificity", "referable_specificity"),
    ]
    parts = [
        "<h2>Grading</h2>\n"
        + _html_table(
            ["metric", "value"],
            [
                (
                    label,
                    format_number(grading.get(key), ".4f", NA) if key != "n" else grading.get(key),
                )
                for label, key in labels
            ],
        )
    ]
    confusion = grading.get("confusion")
    if confusion:
        rows = [[f"true {r}", *row] for r, row in enumerate(confusion)]
        parts.append(
            "<p>Confusion matrix (rows: true grade, columns: predicted grade)</p>\n"
            + _html_table(["", *[f"pred {c}" for c in range(len(confusion))]], rows, "confusion")
        )
    return parts


def _intervals_section(metrics: dict) -> list[str]:
    """Bootstrap intervals, the referable ECE and the referable operating points."""
    names = [
        ("QWK", "qwk"),
        ("accuracy", "accuracy"),
        ("macro AUC", "macro_auc"),
        ("referable AUC", "referable_auc"),
        ("ECE", "ece"),
    ]
    intervals = metrics["intervals"]
    rows = [
        (
            label,
            *(
                format_number(intervals[key].get(end), ".4f", NA)
                for end in ("value", "low", "high")
            ),
        )
        for label, key in names
        if key in intervals
    ]
    referable_ece = metrics.get("calibration", {}).get("referable_ece")
    rows.append(("referable ECE", format_number(referable_ece, ".4f", NA), "", ""))
    parts = [
        "<h2>Intervals and calibration (95% bootstrap over images)</h2>\n"
        + _html_table(["metric", "value", "low", "high"], rows)
    ]
    points = [
        (
            p["name"],
            *(
                format_number(p[key], ".4f", NA)
                for key in ("threshold", "sensitivity", "specificity")
            ),
        )
        for p in metrics.get("operating_points", [])
    ]
    if points:
        parts.append(
            "<p>Referable DR (p(grade >= 2) at or above the threshold)</p>\n"
            + _html_table(["operating point", "threshold", "sensitivity", "specificity"], points)
        )
    return parts


def _sr_section(sr: dict) -> list[str]:
    rows = [
        (
            "SR" if name == "sr" else name,
            format_number(m.get("psnr"), ".2f", NA),
            format_number(m.get("ssim"), ".4f", NA),
            format_number(m.get("psnr_lesion"), ".2f", NA),
        )
        for name, m in sr.items()
    ]
    return [
        "<h2>Super-resolution (inside the FOV, mean over images)</h2>\n"
        + _html_table(["method", "PSNR (dB)", "SSIM", "lesion PSNR (dB)"], rows)
    ]


def _mechanism_section(mechanism: dict) -> list[str]:
    signals = [
        ("SR vs HR Grad-CAM: mean squared difference", "cam_mse"),
        ("SR vs HR Grad-CAM: Pearson correlation", "cam_pearson"),
        ("SR vs HR Grad-CAM: IoU of the top 10% pixels", "cam_top_iou"),
        ("QWK graded from SR", "qwk_sr"),
        ("QWK graded from HR", "qwk_hr"),
        ("task gap (QWK SR minus HR)", "task_gap"),
    ]
    rows = [(label, format_number(mechanism.get(key), ".4f", NA)) for label, key in signals]
    return [
        "<h2>Task-aware mechanism (eval-mode grader, single pass)</h2>\n"
        + _html_table(["signal", "value"], rows)
    ]


def _segmentation_section(segmentation: dict) -> list[str]:
    rows = [
        (
            name,
            format_number(m.get("aupr"), ".4f", NA),
            format_number(m.get("auc"), ".4f", NA),
            format_number(m.get("dice"), ".4f", NA),
            format_number(m.get("prevalence"), ".2e", NA),
            m.get("n_images", ""),
        )
        for name, m in segmentation.items()
    ]
    return [
        "<h2>Lesion segmentation (pixels pooled over images)</h2>\n"
        + _html_table(["lesion", "AUPR", "ROC AUC", "Dice at 0.5", "prevalence", "images"], rows)
    ]


def _embedded(title: str, images: Sequence[tuple[str, Path]]) -> list[str]:
    """A heading and each image embedded as a data URI, captioned with its name."""
    if not images:
        return []
    return [f"<h2>{title}</h2>\n"] + [
        f'<figure><img class="figure" src="{_data_uri(p)}" alt="{html.escape(name)}"><figcaption>{html.escape(name)}</figcaption></figure>\n'
        for name, p in images
    ]


def write_test_report(
    path: str | Path,
    metrics: dict,
    figures: Sequence[tuple[str, Path]],
    samples: Sequence[Path] = (),
) -> Path:
    """test.py's ``report.html``: metric tables, confusion matrix, figures and sample panels, every
    image embedded (one file to move or mail)."""
    path = Path(path)
    title = f"DeepMT-DR evaluation: {metrics.get('dataset', '')} {metrics.get('split', '')} ({metrics.get('input', '')} input)"
    parts = [_page_head(title), _facts([(key, metrics.get(key)) for key in TEST_FACTS])]
    if metrics.get("grading"):
        parts += _grading_section(metrics["grading"])
    if "intervals" in metrics:
        parts += _intervals_section(metrics)
    if "sr" in metrics:
        parts += _sr_section(metrics["sr"])
    if "mechanism" in metrics:
        parts += _mechanism_section(metrics["mechanism"])
    if "segmentation" in metrics:
        parts += _segmentation_section(metrics["segmentation"])
    parts += _embedded("Figures", figures)
    parts += _embedded("Sample panels", [(p.stem, p) for p in samples])
    parts.append(f'<p class="note">{html.escape(DISCLAIMER)}</p>\n' + _page_tail())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts), encoding="utf-8")
    return path


class PredictionReport:
    """predict.py's ``report.html``, written as rows arrive: the table body streams to a side file
    and is wrapped with the summary at :meth:`close`, so memory stays flat over a large folder.

    Images are linked relative to the report's folder (thumbnails and evidence panels next to it).
    """

    COLUMNS = (
        "#",
        "photograph",
        "file",
        "status",
        "grade",
        "referable DR p",
        "quality flags",
        *(f"{name} % of FOV" for name in LESIONS),
        "reference grade",
    )

    def __init__(
        self,
        path: str | Path,
        title: str,
        facts: Sequence[tuple[str, object]],
        referable_threshold: float | None = None,
    ) -> None:
        """``referable_threshold``: the model's referral threshold (evaluation/referable.py)."""
        self.path = Path(path)
        self.title, self.facts = title, list(facts)
        self.threshold = model_threshold({"referable_threshold": referable_threshold})
        self.body_path = self.path.with_name(f".{self.path.name}.rows")
        self.body = self.body_path.open("w", encoding="utf-8")
        self.counts: dict[str, int] = {}
        self.referable = 0

    def add(self, row: dict) -> None:
        """One input: ``index, path, status, reason, grade, probabilities, p_referable, flags,
        areas, reference_grade, thumbnail, panel`` (the last two relative paths or None)."""
        status = row["status"]
        self.counts[status] = self.counts.get(status, 0) + 1
        css = "ok" if status == "ok" else "ungradable" if status == "ungradable" else "skipped"
        name = html.escape(str(row["path"]))
        thumb = row.get("thumbnail")
        image = f'<img class="thumb" src="{html.escape(thumb)}" alt="{name}">' if thumb else ""
        if row.get("panel"):
            image = f'<a href="{html.escape(row["panel"])}">{image or "panel"}</a>'
        grade, referable = row.get("grade"), row.get("p_referable")
        if grade is not None:
            grade_cell = f'<td data-sort="{grade}">{grade} {GRADE_LABELS.get(grade, "")} <small>(p = {row["probabilities"][grade]:.2f})</small></td>'
        else:
            grade_cell = '<td data-sort="-1">not graded</td>'
        if referable is not None:
            decision = bool(is_referable(referable, self.threshold))
            self.referable += decision
            # The grade (ordinal decoding) and the referral (p_referable >= threshold) answer two
            # questions and can disagree near the boundary: say so where they do.
            disagree = grade is not None and (grade >= REFERABLE_GRADE) != decision
            note = " <small>(grade and referral disagree)</small>" if disagree else ""
            referable_cell = (
                f'<td class="num" data-sort="{referable:.4f}"><span class="bar"><span style="width:{100 * referable:.0f}%"></span></span>'
                f"{referable:.3f} {'<b>refer</b>' if decision else ''}{note}</td>"
            )
        else:
            referable_cell = '<td data-sort="-1"></td>'
        areas = row.get("areas")
        area_cells = (
            "".join(f'<td class="num" data-sort="{a:.6f}">{100 * a:.2f}</td>' for a in areas)
            if areas
            else '<td data-sort="-1"></td>' * len(LESIONS)
        )
        reason = f"<br><small>{html.escape(row['reason'])}</small>" if row.get("reason") else ""
        reference = row.get("reference_grade")
        self.body.write(
            f'<tr><td class="num" data-sort="{row["index"]}">{row["index"] + 1}</td><td>{image}</td>'
            f'<td class="file" data-sort="{name}">{name}</td><td class="{css}" data-sort="{status}">{status}{reason}</td>{grade_cell}{referable_cell}'
            f'<td data-sort="{html.escape(", ".join(row.get("flags", ())))}">{html.escape(", ".join(row.get("flags", ())))}</td>'
            f"{area_cells}"
            f'<td class="num" data-sort="{reference if reference is not None else -1}">{"" if reference is None else reference}</td></tr>\n'
        )

    def close(self) -> Path:
        """Write ``report.html`` (summary, then the table) and remove the side file."""
        self.body.close()
        total = sum(self.counts.values())
        graded = self.counts.get("ok", 0)
        skipped = total - graded - self.counts.get("ungradable", 0)
        summary = [
            ("inputs", total),
            ("graded", graded),
            (f"referable DR (p_referable >= {self.threshold:.3f})", self.referable),
            ("ungradable (quality flags)", self.counts.get("ungradable", 0)),
            ("not read (see status)", skipped),
        ]
        head = "".join(
            f"<th data-sortable>{html.escape(c)}</th>"
            if c != "photograph"
            else f"<th>{html.escape(c)}</th>"
            for c in self.COLUMNS
        )
        with atomic_open(self.path, "w", encoding="utf-8") as out:
            out.write(_page_head(self.title))
            out.write(f'<p class="note">{html.escape(DISCLAIMER)}</p>\n')
            out.write(_facts(self.facts + summary))
            out.write(
                "<p>Click a thumbnail for its evidence panel (photograph, model input, SR, lesion maps, Grad-CAM); "
                "with JavaScript, click a column header to sort.</p>\n"
            )
            out.write(f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>\n')
            with self.body_path.open(encoding="utf-8") as rows:
                shutil.copyfileobj(rows, out)
            out.write("</tbody></table>\n" + _page_tail())
        self.body_path.unlink(missing_ok=True)
        return self.path
