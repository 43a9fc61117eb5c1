"""Results tables rendered from committed records, and the docs they live in kept in step.

A generated table sits in a Markdown file between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->``; :func:`regenerate` rewrites every such block from its renderer (a
function of the repository root), so no number in a table is typed by hand. ``scripts/
results_tables.py`` is the command; a test fails when a committed table differs from its
regeneration.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import yaml

from data.duplicates import read_groups
from evaluation.cv_results import markdown, study_summary

Renderer = Callable[[Path], str]

BLOCK = re.compile(r"(<!-- table:(?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def duplicates_table(root: Path, dataset: str = "idrid") -> str:
    """Score distribution of planted copies, copies found, and distinct pairs (data/duplicates.py)."""
    record = json.loads((root / f"docs/records/duplicates/{dataset}.json").read_text())
    bins = record["bins"]
    rows = ["| similarity | planted copies | copies found | distinct pairs |", "|---|---|---|---|"]
    kinds = ("planted_copies", "grouped_copies", "distinct")
    for i in range(len(bins) - 1):
        counts = [record[kind]["counts"][i] for kind in kinds]
        if any(counts):
            rows.append(f"| [{bins[i]:.2f}, {bins[i + 1]:.2f}) | " + " | ".join(str(c) for c in counts) + " |")
    rows.append("| min / max | " + " | ".join(f"{record[k]['min']:.3f} / {record[k]['max']:.3f}" for k in kinds) + " |")
    rows.append("| pairs | " + " | ".join(str(record[k]["n"]) for k in kinds) + " |")
    note = (
        f"\n{record['images']} images; threshold {record['threshold']:.2f}. "
        f"`{record['command']}` ({record['seconds']:.0f} s on {record['cpu']}); "
        f"record: `docs/records/duplicates/{dataset}.json`.\n"
    )
    return "\n".join(rows) + "\n" + note


def cv_table(root: Path, study: str = "scripts/idrid_cv.yaml", records: str = "docs/records/idrid_cv") -> str:
    """The cross-validated comparison (evaluation/cv_results.py) from its committed records."""
    spec = yaml.safe_load((root / study).read_text(encoding="utf-8"))
    rows = {name: values.get("summary", "") for name, values in spec["rows"].items()}
    folds_file = root / spec["folds_file"]
    groups_file = folds_file.with_name(folds_file.name.replace("_folds", "_groups"))
    groups = read_groups(groups_file) if groups_file.is_file() else {}
    summary = study_summary(root / records, list(rows), spec["reference"], groups)
    return markdown(summary, rows, spec["reference"])


RENDERERS: dict[str, Renderer] = {"idrid-duplicates": duplicates_table, "idrid-cv": cv_table}


def regenerate(text: str, root: Path, renderers: dict[str, Renderer] = RENDERERS) -> str:
    """``text`` with every marked table block rewritten by its renderer; an unknown name is a KeyError."""

    def render(match: re.Match) -> str:
        name = match.group("name")
        if name not in renderers:
            raise KeyError(f"no renderer for table block {name!r}")
        return f"{match.group(1)}{renderers[name](root)}{match.group(4)}"

    return BLOCK.sub(render, text)


def table_names(text: str) -> list[str]:
    return [match.group("name") for match in BLOCK.finditer(text)]
