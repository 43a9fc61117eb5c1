"""Two models' predictions on the same photographs, compared with paired bootstrap intervals.

The question a release comparison asks ("is the 1024 model better than the 512 one on these
photographs?") needs both models scored on the *same* images, and an interval on the difference,
not two intervals side by side: the photographs both models find hard move both scores together,
and pairing cancels that. This module lines two predictions CSVs (test.py's or predict.py's,
``evaluation/prediction_csv.py``) up on their common ids, optionally keeps a chosen subset (say,
the photographs neither model trained on), and returns each model's metrics with intervals and
the paired difference ``a - b``, resampling whole duplicate groups (``evaluation/intervals.py``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from data.records import DataError
from evaluation.formatting import format_interval
from evaluation.intervals import METRICS, bootstrap_intervals, paired_difference
from evaluation.prediction_csv import GradedRows


@dataclass(frozen=True)
class Aligned:
    """Two models' rows on the same images, in the same order."""

    keys: list[str]
    grades: np.ndarray
    a: GradedRows
    b: GradedRows


def _take(rows: GradedRows, keys: list[str]) -> GradedRows:
    index = {key: i for i, key in enumerate(rows.keys)}
    order = np.asarray([index[key] for key in keys], dtype=np.int64)
    return GradedRows(keys, rows.reference[order], rows.predicted[order], rows.probs[order])


def align(
    a: GradedRows, b: GradedRows, only: Collection[str] | None = None, names=("a", "b")
) -> Aligned:
    """The images both files graded with a known reference (and in ``only``, when given), in
    ``a``'s order. A reference grade that differs between the two files, a class count that
    differs, or no common image at all raises ``DataError`` naming what disagrees."""
    a, b = a.with_reference(), b.with_reference()
    if a.probs.shape[1] != b.probs.shape[1]:
        raise DataError(
            f"{names[0]} has {a.probs.shape[1]} grade classes, {names[1]} {b.probs.shape[1]}"
        )
    in_b = set(b.keys)
    keep = set(only) if only is not None else None
    keys = [key for key in a.keys if key in in_b and (keep is None or key in keep)]
    if not keys:
        raise DataError(
            f"{names[0]} and {names[1]} have no graded image in common"
            + (" among the ids of --only" if keep is not None else "")
        )
    a, b = _take(a, keys), _take(b, keys)
    differs = np.flatnonzero(a.reference != b.reference)
    if differs.size:
        key = keys[differs[0]]
        raise DataError(
            f"{key}: reference grade {a.reference[differs[0]]} in {names[0]} but "
            f"{b.reference[differs[0]]} in {names[1]} ({differs.size} such images)"
        )
    return Aligned(keys, a.reference, a, b)


def held_out(
    keys: Collection[str], training_roles: list[Mapping[str, str]], groups: Mapping[str, str]
) -> set[str]:
    """The ``keys`` that no model trained on: no copy of the photograph (its duplicate group)
    has the role ``train`` in any of ``training_roles`` (one ``{id: role}`` per model's split
    file, ``data/splits.read_split_file``). An id a split file does not list counts as unseen."""
    groups = dict(groups)
    members: dict[str, list[str]] = {}
    for key in set(keys) | set(groups):
        members.setdefault(groups.get(key, key), []).append(key)
    return {
        key
        for key in keys
        if not any(
            roles.get(copy) == "train"
            for copy in members[groups.get(key, key)]
            for roles in training_roles
        )
    }


def compare(
    aligned: Aligned,
    groups: Mapping[str, str] | None = None,
    referable_thresholds: tuple[float, float] = (0.5, 0.5),
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict:
    """Both models' ``summary_metrics`` with 95% intervals and the paired difference ``a - b``.

    ``groups``: ``{id: group}`` of duplicate photographs (``splits/<dataset>_groups.csv``);
    copies are resampled together. ``referable_thresholds``: each model's cut on p(grade >= 2)
    for sensitivity and specificity (fixed, not refitted per resample).
    """
    groups = groups or {}
    group_of = [groups.get(key, key) for key in aligned.keys]
    common = dict(groups=group_of, n_resamples=n_resamples, seed=seed)
    a, b = aligned.a, aligned.b
    return {
        "images": len(aligned.keys),
        "groups": len(set(group_of)),
        "a": bootstrap_intervals(
            aligned.grades, a.predicted, a.probs, referable_thresholds[0], **common
        ),
        "b": bootstrap_intervals(
            aligned.grades, b.predicted, b.probs, referable_thresholds[1], **common
        ),
        "difference": paired_difference(
            aligned.grades,
            a.predicted,
            a.probs,
            b.predicted,
            b.probs,
            referable_thresholds[0],
            referable_thresholds[1],
            **common,
        ),
    }


def markdown(result: dict, names: tuple[str, str]) -> str:
    """One table: metric, each model's value [95% interval], the difference [interval], p."""

    a, b = names
    lines = [
        f"| metric | {a} | {b} | {a} minus {b} | p |",
        "|---|---|---|---|---|",
    ]
    for metric in METRICS:
        d = result["difference"][metric]
        lines.append(
            f"| {metric} | {format_interval(result['a'][metric])} | {format_interval(result['b'][metric])} | "
            f"{d['difference']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}] | {d['p_value']:.3f} |"
        )
    lines.append("")
    lines.append(
        f"{result['images']} photographs ({result['groups']} duplicate groups) graded by both; "
        "95% percentile bootstrap intervals, whole groups resampled, paired on the same resamples."
    )
    return "\n".join(lines) + "\n"
