"""Results tables are regenerated from committed records; the committed docs match their regeneration."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from evaluation.results_tables import (
    RENDERERS,
    SEED_TABLES,
    cv_answer,
    recorded_folds,
    regenerate,
    seed_table,
    table_names,
    verdict,
)
from scripts.results_tables import DOCS

ROOT = Path(__file__).resolve().parents[1]


def test_marked_blocks_are_rewritten_and_the_rest_is_kept():
    text = "intro\n<!-- table:t -->\nold 1\n<!-- /table:t -->\nmiddle\n<!-- table:u -->\n<!-- /table:u -->\nend\n"
    renderers = {"t": lambda root: "| a |\n", "u": lambda root: f"{root.name}\n"}
    fresh = regenerate(text, Path("/x/repo"), renderers)
    assert (
        fresh
        == "intro\n<!-- table:t -->\n| a |\n<!-- /table:t -->\nmiddle\n<!-- table:u -->\nrepo\n<!-- /table:u -->\nend\n"
    )
    assert table_names(fresh) == ["t", "u"]
    with pytest.raises(KeyError, match="nope"):
        regenerate("<!-- table:nope -->\n<!-- /table:nope -->", ROOT, renderers)


@pytest.mark.parametrize("name", DOCS)  # every file the regeneration command rewrites
def test_committed_tables_equal_their_regeneration(name):
    text = (ROOT / name).read_text(encoding="utf-8")
    assert set(table_names(text)) <= set(RENDERERS)
    assert regenerate(text, ROOT) == text, (
        f"{name} has stale tables: run python scripts/results_tables.py"
    )


def test_results_page_has_the_duplicates_table():
    assert "idrid-duplicates" in table_names((ROOT / "docs/RESULTS.md").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# The answer's wording follows the intervals (evaluation.results_tables.cv_answer)
# --------------------------------------------------------------------------------------------------

FOLDS = [0, 1, 2, 3, 4]
ROWS = ["deepmt_dr", "no_task_aware", "lr_cls"]


def _interval(value: float) -> dict:
    return {"value": value, "low": value - 0.05, "high": value + 0.05, "n_valid": 2000}


def _difference(value: float, low: float, high: float, p: float) -> dict:
    return {"difference": value, "low": low, "high": high, "p_value": p, "n_valid": 2000}


def _summary(main: tuple, task: tuple, folds=FOLDS) -> dict:
    """A fake study_summary: DeepMT-DR minus lr_cls = ``main``, minus no_task_aware = ``task``."""
    return {
        "folds": folds,
        "images": 461,
        "rows": {
            "deepmt_dr": {"intervals": {"qwk": _interval(0.60)}},
            "lr_cls": {"intervals": {"qwk": _interval(0.50)}},
            "no_task_aware": {"intervals": {"qwk": _interval(0.59)}},
        },
        "differences": {
            "lr_cls": {"qwk": _difference(*main)},
            "no_task_aware": {"qwk": _difference(*task)},
        },
    }


def test_answer_says_beats_when_the_interval_is_above_zero():
    text = cv_answer(
        _summary((0.10, 0.04, 0.16, 0.002), (0.03, 0.01, 0.05, 0.01)),
        {r: FOLDS for r in ROWS},
        FOLDS,
    )
    assert "On all 461 held-out photographs of the 5 folds (pooled QWK" in text
    assert "`deepmt_dr` minus `lr_cls`, QWK +0.100 [+0.040, +0.160] (p = 0.002)" in text
    assert "DeepMT-DR **beats** grading the LR photograph directly" in text
    assert (
        "The task-aware loss: `deepmt_dr` minus `no_task_aware`, QWK +0.030 [+0.010, +0.050] (p = 0.010): it **helps**"
        in text
    )
    assert "not finished" not in text and "cannot be told apart" not in text


def test_answer_says_worse_when_the_interval_is_below_zero():
    text = cv_answer(
        _summary((-0.10, -0.17, -0.03, 0.004), (-0.02, -0.04, -0.01, 0.03)),
        {r: FOLDS for r in ROWS},
        FOLDS,
    )
    assert "QWK -0.100 [-0.170, -0.030] (p = 0.004)" in text
    assert "DeepMT-DR grades **worse** than grading the LR photograph directly" in text
    assert "it **hurts**" in text
    assert "beats" not in text


def test_answer_says_cannot_be_told_apart_when_the_interval_contains_zero():
    text = cv_answer(
        _summary((0.02, -0.03, 0.07, 0.41), (0.001, -0.01, 0.012, 0.9)),
        {r: FOLDS for r in ROWS},
        FOLDS,
    )
    assert "DeepMT-DR **cannot be told apart** from grading the LR photograph directly" in text
    assert "it has **no measurable effect** (the interval contains 0)" in text
    assert "beats" not in text and "worse" not in text
    assert text.count(". ") + 1 <= 4  # 2-4 sentences


def test_an_interval_touching_zero_is_not_a_win():
    assert verdict(_difference(0.05, 0.0, 0.1, 0.05)) == "unclear"
    assert verdict(_difference(0.05, float("nan"), float("nan"), float("nan"))) == "unclear"
    assert verdict(_difference(0.05, 0.001, 0.1, 0.04)) == "better"
    assert verdict(_difference(-0.05, -0.1, -0.001, 0.04)) == "worse"


def test_answer_without_a_finished_fold_says_so_and_names_the_recorded_folds():
    empty = {"folds": [], "rows": {}, "differences": {}}
    text = cv_answer(empty, {"deepmt_dr": [0, 1], "no_task_aware": [0], "lr_cls": []}, FOLDS)
    assert "has not finished, so there is no answer yet" in text
    assert "`deepmt_dr` folds 0, 1; `no_task_aware` folds 0" in text
    assert "beats" not in text and "worse" not in text
    assert "recorded so far: nothing" in cv_answer(empty, {r: [] for r in ROWS}, FOLDS)


def test_answer_on_a_partial_study_names_the_finished_and_missing_folds():
    recorded = {"deepmt_dr": [0, 1, 2], "no_task_aware": [0, 1], "lr_cls": [0, 1]}
    text = cv_answer(
        _summary((0.10, 0.04, 0.16, 0.002), (0.0, -0.01, 0.01, 1.0), folds=[0, 1]), recorded, FOLDS
    )
    assert text.startswith("**The cross-validated study has not finished:** folds 0, 1 of 5")
    assert "`deepmt_dr` folds 3, 4; `no_task_aware` folds 2, 3, 4; `lr_cls` folds 2, 3, 4" in text
    assert "On the 461 held-out photographs of folds 0, 1" in text
    assert "**beats**" in text and "**no measurable effect**" in text


def test_recorded_folds_need_both_files(tmp_path):
    (tmp_path / "lr_cls").mkdir()
    for name in ("fold0.csv", "fold0.json", "fold1.csv", "fold3.json"):
        (tmp_path / "lr_cls" / name).write_text("")
    assert recorded_folds(tmp_path, ["lr_cls", "hr_cls"]) == {"lr_cls": [0], "hr_cls": []}


# --------------------------------------------------------------------------------------------------
# Per-seed tables from the table runner's results.csv
# --------------------------------------------------------------------------------------------------


def test_seed_table_means_sds_and_paired_differences(tmp_path):
    (tmp_path / "results.csv").write_text(
        "row,method,seed,qwk,accuracy,psnr,psnr_bicubic,ssim_bicubic,scale,epoch_seconds,wall_seconds\n"
        "a,deepmt_dr,0,0.5,0.4,33.0,31.0,0.8,4,60,100\n"
        "a,deepmt_dr,1,0.7,0.6,34.0,31.0,0.8,4,120,100\n"
        "ref,lr_cls,0,0.2,0.3,,31.0,0.8,4,60,\n"
        "ref,lr_cls,1,0.3,0.3,,31.0,0.8,4,60,\n"
    )
    (tmp_path / "rows.yaml").write_text(
        "reference: ref\nrows:\n  ref: {method: lr_cls}\n  a: {method: deepmt_dr}\n"
    )
    text = seed_table(tmp_path, "results.csv", "rows.yaml", "test")
    lines = text.splitlines()
    assert lines[0].endswith("| ΔQWK vs ref | train min |")
    assert lines[2].startswith("| ref | 2 | 0.300 ± 0.000 | 0.250 ± 0.071 |") and lines[2].endswith(
        "| - | 1.0 |"
    )
    assert lines[3].startswith("| a | 2 | 0.500 ± 0.141 | 0.600 ± 0.141 |")
    assert "| 33.50 ± 0.71 |" in lines[3] and lines[3].endswith(
        "| +0.350 ± 0.071 | 1.5 |"
    )  # 0.5-0.2, 0.7-0.3
    assert "x4: 31.00 dB / 0.800" in text and "200 min" not in text and "3 min" in text
    assert "what it is" not in text  # plain methods: no description table


@pytest.mark.parametrize("name", ["idrid-small-val", "idrid-recipe-val", "idrid-levers-val"])
def test_committed_table_md_is_reproduced_from_its_results_csv(name):
    results, _, _ = SEED_TABLES[name]
    table = RENDERERS[name](ROOT).split("\n\n")[0]
    committed = (ROOT / results).with_name("table.md").read_text(encoding="utf-8")
    assert table in committed


# --------------------------------------------------------------------------------------------------
# The docs: what must be generated, the README's first screen, links that resolve
# --------------------------------------------------------------------------------------------------

GENERATED_IN_RESULTS = [
    "idrid-cv-answer",
    "idrid-cv",
    "idrid-duplicates",
    "compared-methods",
    "ablation",
    "idrid-small-val",
    "idrid-recipe-val",
    "idrid-levers-val",
]
OWN_DOCS = [
    "README.md",
    "docs/RESULTS.md",
    "docs/ARCHITECTURE.md",
    "docs/USAGE.md",
    "docs/DATASETS.md",
    "docs/DIFFERENCES.md",
    "Compared Methods/README.md",
    "Ablation study/README.md",
]


def test_results_page_opens_with_the_answer_and_generates_every_recorded_table():
    text = (ROOT / "docs/RESULTS.md").read_text(encoding="utf-8")
    assert table_names(text)[0] == "idrid-cv-answer"
    assert (
        text.index("## The answer so far")
        < text.index("<!-- table:idrid-cv-answer -->")
        < text.index("\n## IDRiD")
    )
    assert set(GENERATED_IN_RESULTS) <= set(table_names(text))
    assert "\n## Historical (cannot be rebuilt at HEAD)\n" in text


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 220
    assert (
        "pip install -r requirements-dev.txt && python -m pytest -q" in lines
    )  # .ci/run runs the README's test command
    assert "python predict.py --demo" in text
    first_screen = "\n".join(lines[:40])
    assert (
        "<!-- table:idrid-cv-answer -->" in first_screen
    )  # whichever way the answer falls, it is seen first
    assert {"idrid-cv-answer", "idrid-cv"} <= set(table_names(text))


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but - and _ dropped, spaces to -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(text: str) -> set[str]:
    anchors, seen, fence = set(), {}, False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        match = None if fence else re.match(r"#{1,6} (.+)", line)
        if match:
            slug = _slug(match.group(1))
            anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("name", OWN_DOCS)
def test_relative_links_and_anchors_resolve(name):
    path = ROOT / name
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / unquote(file_part)).resolve() if file_part else path
        assert linked.exists(), f"{name}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked.read_text(encoding="utf-8")), (
                f"{name}: no heading for #{anchor} in {file_part or name}"
            )


def test_answer_and_table_from_records_on_disk(tmp_path):
    """The committed-record path: study file, folds file, per-(row, fold) CSV + JSON -> answer and table."""
    import json

    import numpy as np

    from data.splits import write_folds_file
    from evaluation.results_tables import cv_answer_block, cv_table

    rng = np.random.default_rng(0)
    ids = [f"img{i:03d}" for i in range(60)]
    folds = {image_id: i % 3 for i, image_id in enumerate(ids)}
    write_folds_file(tmp_path / "splits/toy_folds.csv", "toy", folds, 3, 0)
    grades = {image_id: int(rng.integers(0, 5)) for image_id in ids}
    (tmp_path / "study.yaml").write_text(
        "folds_file: splits/toy_folds.csv\nreference: deepmt_dr\nrows:\n"
        "  deepmt_dr: {summary: the method}\n  no_task_aware: {summary: no task-aware loss}\n  lr_cls: {summary: LR grader}\n"
    )

    def record(row: str, fold: int, accuracy: float) -> None:
        folder = tmp_path / "records" / row
        folder.mkdir(parents=True, exist_ok=True)
        lines = ["id,grade,predicted,p0,p1,p2,p3,p4"]
        for image_id in (i for i in ids if folds[i] == fold):
            grade = grades[image_id]
            predicted = grade if rng.random() < accuracy else int(rng.integers(0, 5))
            p = np.full(5, 0.05)
            p[predicted] = 0.8
            lines.append(f"{image_id},{grade},{predicted}," + ",".join(f"{v:.2f}" for v in p))
        (folder / f"fold{fold}.csv").write_text("\n".join(lines) + "\n")
        (folder / f"fold{fold}.json").write_text(
            json.dumps({"cpu": "toy CPU", "wall_seconds": 60.0})
        )

    for fold in (0, 1):
        record("deepmt_dr", fold, 0.95)
        record("no_task_aware", fold, 0.95)
    record("lr_cls", 0, 0.1)
    answer = cv_answer_block(tmp_path, "study.yaml", "records")
    assert answer.startswith("**The cross-validated study has not finished:** folds 0 of 3")
    assert "`deepmt_dr` folds 2; `no_task_aware` folds 2; `lr_cls` folds 1, 2" in answer
    assert "On the 20 held-out photographs of folds 0" in answer and "**beats**" in answer
    table = cv_table(tmp_path, "study.yaml", "records")
    assert table.startswith("| row | QWK |") and "toy CPU" in table


def test_paired_predictions_table_compares_the_same_photographs_and_says_when_a_file_is_missing(
    tmp_path,
):
    """A model against itself differs by exactly 0 on every metric; a model against one that
    grades every photograph 0 loses QWK; a missing file is named, not an error."""
    from evaluation.release_tables import paired_predictions_table

    header = "id,grade,predicted,p0,p1,p2,p3,p4\n"
    rows = [
        f"img{i},{g},{g}," + ",".join("0.8" if k == g else "0.05" for k in range(5)) + "\n"
        for i, g in enumerate([0, 1, 2, 3, 4] * 6)
    ]
    flat = [f"img{i},{g},0,0.8,0.05,0.05,0.05,0.05\n" for i, g in enumerate([0, 1, 2, 3, 4] * 6)]
    (tmp_path / "good.csv").write_text(header + "".join(rows))
    (tmp_path / "flat.csv").write_text(header + "".join(flat))

    same = paired_predictions_table(tmp_path, "good.csv", "good.csv", ("x", "y"))
    qwk = next(line for line in same.splitlines() if line.startswith("| qwk"))
    assert "+0.000 [+0.000, +0.000]" in qwk
    worse = paired_predictions_table(tmp_path, "flat.csv", "good.csv", ("flat", "good"))
    qwk = next(line for line in worse.splitlines() if line.startswith("| qwk")).split("|")
    assert qwk[4].strip().startswith("-1.000")
    assert "30 photographs" in worse
    assert "nope.csv" in paired_predictions_table(tmp_path, "nope.csv", "good.csv", ("a", "b"))


def test_releases_headline_reads_each_record_and_names_a_missing_one(tmp_path):
    """The README's release paragraph comes from the records: change a record, the text follows."""
    import json

    from evaluation.release_tables import releases_headline

    evaluation = {
        "input": "lr",
        "tta": True,
        "grading": {"n": 7, "qwk": 0.5, "referable_auc": 0.8, "accuracy": 0.4},
        "intervals": {"qwk": {"value": 0.5, "low": 0.3, "high": 0.7}},
        "segmentation": {"MA": {"aupr": 0.25}, "mean": {"aupr": 0.4}},
        "sr": {"sr": {"psnr": 41.0}, "bicubic": {"psnr": 40.0}},
    }
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "record.json").write_text(json.dumps({"evaluations": {"val_lr": evaluation}}))
    text = releases_headline(tmp_path, {"rel_a": "a", "rel_b": "b"})
    assert "(7 graded photographs" in text
    assert "`rel_a` QWK 0.500 [0.300, 0.700], referable AUC 0.800" in text
    assert "mean 0.400 (MA 0.250), SR +1.00 dB against bicubic" in text
    assert "Not recorded yet: `rel_b`." in text
