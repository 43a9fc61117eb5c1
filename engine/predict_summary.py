"""predict.py against reference grades: when the inputs carry them (a CSV list with a ``grade``
column, or the demo's renders), the graded photographs with a reference are scored as test.py
scores a split: grading metrics, calibration (ECE and a reliability diagram), 95% bootstrap
intervals, and sensitivity / specificity at the two operating points (evaluation/uncertainty.py),
by the one referable rule (evaluation/referable.py). Written to ``summary.json`` and
``reliability.png`` beside predictions.csv, and summarised in report.html's facts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from data.atomic import write_atomic
from evaluation.formatting import json_safe
from evaluation.metrics import grading_metrics
from evaluation.prediction_csv import read_graded
from evaluation.report import plot_reliability
from evaluation.uncertainty import uncertainty_report

SUMMARY_FILE = "summary.json"
RELIABILITY_FILE = "reliability.png"


def reference_summary(
    out: Path, referable_threshold: float | None, resamples: int = 2000
) -> dict | None:
    """Score ``out``/predictions.csv against its reference grades; None when no graded row has one.
    Writes ``summary.json`` and ``reliability.png`` into ``out``."""
    rows = read_graded(out / "predictions.csv").with_reference()
    reference, grades, probs = rows.reference, rows.predicted, rows.probs
    if reference.size == 0:
        return None
    summary = {
        "n": int(reference.size),
        "referable_threshold": referable_threshold,
        "grading": grading_metrics(reference, probs, None, referable_threshold, predicted=grades),
        **uncertainty_report(reference, grades, probs, None, referable_threshold, resamples),
    }
    plot_reliability(summary["calibration"]["reliability"], out / RELIABILITY_FILE)
    write_atomic(out / SUMMARY_FILE, (json.dumps(json_safe(summary), indent=2) + "\n").encode())
    return summary


def _with_interval(summary: dict, key: str) -> str:
    entry = summary["intervals"].get(key, {})
    value, low, high = (entry.get(name, math.nan) for name in ("value", "low", "high"))
    if not math.isfinite(value):
        return "n/a"
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{value:.3f}"
    return f"{value:.3f} (95% CI {low:.3f} to {high:.3f})"


def summary_facts(summary: dict) -> list[tuple[str, str]]:
    """report.html's lines for a reference summary."""
    facts = [
        ("against reference grades", f"{summary['n']} graded photographs ({SUMMARY_FILE})"),
        ("QWK", _with_interval(summary, "qwk")),
        ("accuracy", _with_interval(summary, "accuracy")),
        ("referable-DR AUC", _with_interval(summary, "referable_auc")),
        ("ECE (top label)", _with_interval(summary, "ece")),
        ("reliability diagram", RELIABILITY_FILE),
    ]
    for point in summary["operating_points"]:
        facts.append(
            (
                f"referable DR at {point['name']} (p_referable >= {point['threshold']:.3f})",
                f"sensitivity {point['sensitivity']:.3f}, specificity {point['specificity']:.3f}",
            )
        )
    return facts
