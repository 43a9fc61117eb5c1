"""Which images train, validate and test: the dataset's own splits, else a committed split file.

A dataset's own split names map to roles: ``train`` -> train, ``valid`` -> val, ``test`` -> test.
What the dataset leaves open is carved out deterministically at the patient level (both eyes of
an EyePACS patient stay together), stratified by part and grade:

- ``train`` images of a dataset without a ``valid`` split: ``val_fraction`` of them become val;
- ``all`` images (no split at all): ``val_fraction`` val, ``test_fraction`` test, the rest train.

Copies of one photograph (``splits/<dataset>_groups.csv``, written by ``python -m data.duplicates``)
are tied together like a patient's images: a duplicate group never straddles train and val, and
grading and segmentation copies move together. A group whose grading copies carry different grades
has no trustworthy reference: its grading copies get the role ``excluded`` (no split loads them);
its segmentation copies keep their masks and stay in the group's role.

The result is written once to ``splits/<dataset>.csv`` (commit it: everyone then trains and tests
on the same images) with a SHA-256 of its rows, and read back on every later run; a split file in
which a duplicate group crosses roles is refused, naming the group. ``compute_folds`` deals the
same units into k grade-stratified folds for cross-validation (``splits/<dataset>_folds.csv``).
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from data.atomic import write_atomic
from data.duplicates import read_groups
from data.records import DataError
from data.synthetic.backgrounds import BACKGROUND_IDRID_IDS

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test", "excluded")
EXCLUDED = "excluded"  # a grading copy whose duplicate group disagrees on the grade
ROLE_OF_SPLIT = {"train": "train", "valid": "val", "test": "test"}
SPLITS_DIR = Path(__file__).resolve().parents[1] / "splits"
HEADER_PREFIX = "# DeepMT-DR split file:"


class Labelled(Protocol):
    """What a split needs of an image (a manifest entry or an index record)."""

    id: str
    part: str
    split: str
    grade: int
    patient: str


@dataclass(frozen=True)
class SplitSettings:
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    seed: int = 0
    # ids that must stay in train (IDRiD images used as embedded-dataset backgrounds)
    keep_in_train: frozenset[str] = frozenset()


def default_split_file(dataset: str) -> Path:
    return SPLITS_DIR / f"{dataset}.csv"


def default_groups_file(dataset: str) -> Path:
    """Where ``python -m data.duplicates`` writes a dataset's duplicate groups (committed)."""
    return SPLITS_DIR / f"{dataset}_groups.csv"


def load_groups(dataset: str, path: str | Path | None = None) -> dict[str, str]:
    """``{id: group}`` of a dataset's duplicate groups, or ``{}`` when it has no groups file."""
    path = Path(path) if path else default_groups_file(dataset)
    return read_groups(path) if path.is_file() else {}


def _units(items: list[Labelled], groups: dict[str, str]) -> dict[str, list[Labelled]]:
    """Items that must share a role: a patient's images and every copy of a photograph (by union)."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for item in items:
        keys = sorted({f"patient:{item.patient}", f"group:{groups.get(item.id, item.id)}"})
        first, second = root(keys[0]), root(keys[1])
        if first != second:
            parent[max(first, second)] = min(first, second)
    units: dict[str, list[Labelled]] = defaultdict(list)
    for item in items:
        units[root(f"patient:{item.patient}")].append(item)
    return units


def excluded_ids(items: Iterable[Labelled], groups: dict[str, str]) -> set[str]:
    """Grading copies in a duplicate group whose known grades disagree (see module docstring)."""
    graded: dict[str, list[Labelled]] = defaultdict(list)
    for item in items:
        if item.part == "grading" and item.grade >= 0:
            graded[groups.get(item.id, item.id)].append(item)
    return {
        item.id
        for members in graded.values()
        if len({m.grade for m in members}) > 1
        for item in members
    }


def check_groups(roles: dict[str, str], groups: dict[str, str], where: str | Path) -> None:
    """A DataError naming the first duplicate group whose images have different roles."""
    seen: dict[str, dict[str, str]] = defaultdict(dict)
    for image_id, role in roles.items():
        if role != EXCLUDED and image_id in groups:
            seen[groups[image_id]][image_id] = role
    for group in sorted(seen):
        if len(set(seen[group].values())) > 1:
            placed = ", ".join(f"{i} in {r}" for i, r in sorted(seen[group].items()))
            raise DataError(
                f"{where}: duplicate group {group} crosses sides ({placed}); regenerate the split"
            )


def _quotas(sizes: list[int], fraction: float) -> list[int]:
    """Per-stratum counts summing to ``round(fraction * total)`` (largest remainder), so small
    strata do not all round down to nothing."""
    exact = [fraction * size for size in sizes]
    quotas = [int(value) for value in exact]
    missing = round(fraction * sum(sizes)) - sum(quotas)
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: max(missing, 0)]:
        quotas[i] += 1
    return quotas


def _strata(
    patients: dict[str, list[Labelled]], settings: SplitSettings
) -> tuple[list[tuple[str, int]], dict[tuple[str, int], list[str]]]:
    """Movable units by stratum (part, highest grade), each stratum shuffled by ``settings.seed``."""
    strata: dict[tuple[str, int], list[str]] = defaultdict(list)
    for patient, members in patients.items():
        if any(member.id in settings.keep_in_train for member in members):
            continue
        part = min(member.part for member in members)
        strata[(part, max(member.grade for member in members))].append(patient)
    keys = sorted(strata)
    rng = np.random.default_rng(settings.seed)
    return keys, {
        key: [sorted(strata[key])[i] for i in rng.permutation(len(strata[key]))] for key in keys
    }


def _carve(
    items: list[Labelled],
    fractions: dict[str, float],
    settings: SplitSettings,
    groups: dict[str, str],
) -> dict[str, str]:
    """Unit-level (patient and duplicate group) stratified assignment of ``items`` to train and
    the roles in ``fractions``."""
    patients = _units(items, groups)
    keys, shuffled = _strata(patients, settings)
    roles = {item.id: "train" for item in items}
    start = dict.fromkeys(keys, 0)
    for role, fraction in fractions.items():
        for key, quota in zip(keys, _quotas([len(shuffled[key]) for key in keys], fraction)):
            for patient in shuffled[key][start[key] : start[key] + quota]:
                for member in patients[patient]:
                    roles[member.id] = role
            start[key] += quota
    return roles


def _partition(items: list[Labelled]) -> tuple[dict[str, str], dict[str, list[Labelled]]]:
    """Roles fixed by the dataset's own splits, and the items left open (``train`` without a
    ``valid`` split, ``all``), grouped by their split name."""
    own_splits = {item.split for item in items}
    official: dict[str, str] = {}
    open_items: dict[str, list[Labelled]] = defaultdict(list)
    for item in items:
        if (item.split == "train" and "valid" not in own_splits) or item.split == "all":
            open_items[item.split].append(item)
        elif item.split in ROLE_OF_SPLIT:
            official[item.id] = ROLE_OF_SPLIT[item.split]
        else:
            raise DataError(
                f"{item.id}: unknown split name {item.split!r} (expected train, valid, test or all)"
            )
    return official, open_items


def compute_split(
    items: Iterable[Labelled], settings: SplitSettings, groups: dict[str, str] | None = None
) -> dict[str, str]:
    """``{id: role}`` for the items the dataset's own splits leave open (see module doc)."""
    items, groups = list(items), groups or {}
    own_splits = {item.split for item in items}
    excluded = excluded_ids(items, groups)
    _, open_items = _partition([item for item in items if item.id not in excluded])
    roles: dict[str, str] = {}
    if open_items["train"]:
        roles.update(_carve(open_items["train"], {"val": settings.val_fraction}, settings, groups))
    if open_items["all"]:
        fractions = {"val": settings.val_fraction}
        if "test" not in own_splits:
            fractions["test"] = settings.test_fraction
        roles.update(_carve(open_items["all"], fractions, settings, groups))
    _, open_all = _partition(items)
    roles.update(
        {item.id: EXCLUDED for group in open_all.values() for item in group if item.id in excluded}
    )
    return roles


def compute_folds(
    items: Iterable[Labelled], k: int, settings: SplitSettings, groups: dict[str, str] | None = None
) -> dict[str, int]:
    """``{id: fold}`` (0..k-1; -1 for excluded copies): units (patients, duplicate groups) dealt
    round-robin into k folds within each (part, highest grade) stratum, so every fold holds about
    1/k of each grade and no unit is split. Units pinned by ``settings.keep_in_train`` are dealt
    like the others: in cross-validation every image is held out once."""
    if k < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2, got {k}")
    items, groups = list(items), groups or {}
    excluded = excluded_ids(items, groups)
    units = _units([item for item in items if item.id not in excluded], groups)
    keys, shuffled = _strata(units, SplitSettings(seed=settings.seed))
    folds: dict[str, int] = {}
    dealt = 0  # continue the deal across strata, so small strata do not all start at fold 0
    for key in keys:
        for unit in shuffled[key]:
            for member in units[unit]:
                folds[member.id] = dealt % k
            dealt += 1
    return {**folds, **dict.fromkeys(excluded, -1)}


def fold_roles(folds: dict[str, int], fold: int) -> dict[str, str]:
    """The split of one cross-validation fold: ``fold`` validates, every other fold trains."""
    return {
        image_id: EXCLUDED if f < 0 else ("val" if f == fold else "train")
        for image_id, f in folds.items()
    }


def write_folds_file(path: Path, dataset: str, folds: dict[str, int], k: int, seed: int) -> None:
    """``id,fold`` rows, atomically, with the dataset, k and seed in a comment line."""
    body = "id,fold\n" + "".join(f"{image_id},{folds[image_id]}\n" for image_id in sorted(folds))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# DeepMT-DR folds: dataset={dataset} k={k} seed={seed} sha256={_digest(body)}\n"
    write_atomic(path, (header + body).encode("utf-8"))


def read_folds_file(path: Path) -> dict[str, int]:
    """``{id: fold}`` from a folds file, checking its hash and every row."""
    header, _, body = path.read_text(encoding="utf-8").partition("\n")
    fields = dict(part.split("=", 1) for part in header.split() if "=" in part)
    if "sha256" not in fields or _digest(body) != fields["sha256"]:
        raise DataError(f"{path}: not a folds file, or its rows do not match the recorded sha256")
    folds = {}
    for line_number, line in enumerate(body.splitlines()[1:], start=3):
        image_id, _, fold = line.rpartition(",")
        if not image_id or not fold.lstrip("-").isdigit():
            raise DataError(f"{path} row {line_number}: expected 'id,fold', got {line!r}")
        folds[image_id] = int(fold)
    return folds


def _body(roles: dict[str, str]) -> str:
    return "id,split\n" + "".join(
        f"{sample_id},{roles[sample_id]}\n" for sample_id in sorted(roles)
    )


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def write_split_file(
    path: Path, dataset: str, roles: dict[str, str], settings: SplitSettings
) -> None:
    body = _body(roles)
    header = (
        f"{HEADER_PREFIX} dataset={dataset} seed={settings.seed} val_fraction={settings.val_fraction} "
        f"test_fraction={settings.test_fraction} sha256={_digest(body)}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (header + body).encode("utf-8"))


def read_split_file(path: Path) -> dict[str, str]:
    """``{id: role}`` from a split file, checking its hash (an edited file is refused, not trusted)."""
    text = path.read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    fields = dict(part.split("=", 1) for part in header.split() if "=" in part)
    if not header.startswith(HEADER_PREFIX) or "sha256" not in fields:
        raise DataError(
            f"{path} is not a DeepMT-DR split file (first line must start with '{HEADER_PREFIX}')"
        )
    if _digest(body) != fields["sha256"]:
        raise DataError(
            f"{path}: rows do not match the recorded sha256 (edited or corrupt); delete it to make a new split"
        )
    roles = {}
    for line_number, line in enumerate(body.splitlines()[1:], start=3):
        sample_id, _, role = line.rpartition(",")
        if role not in ROLES:
            raise DataError(f"{path} row {line_number}: split {role!r} is not one of {ROLES}")
        roles[sample_id] = role
    return roles


def assign_roles(
    items: Iterable[Labelled],
    dataset: str,
    split_file: str | Path | None = None,
    settings: SplitSettings = SplitSettings(),
    groups: dict[str, str] | None = None,
) -> dict[str, str]:
    """The role of every item: its own split where the dataset has one; else from the split file,
    computed and written there on the first run. ``groups`` (duplicate groups) must each lie on
    one side of the split file."""
    items, groups = list(items), groups or {}
    official, open_items = _partition(items)
    undecided = [item for group in open_items.values() for item in group]
    if not undecided:
        return official
    path = Path(split_file) if split_file else default_split_file(dataset)
    if path.is_file():
        carved = read_split_file(path)
        check_groups(carved, groups, path)
        missing = [item.id for item in undecided if item.id not in carved]
        if missing:
            raise DataError(
                f"{len(missing)} image(s) of {dataset} are not in split file {path} (e.g. {missing[0]}): "
                "the dataset changed; delete the file to make a new split, or point data.split_file elsewhere"
            )
        unused = len(set(carved) - {item.id for item in undecided})
        if unused:
            log.info("%s: %d ids of %s are not in this copy of the dataset", dataset, unused, path)
    else:
        carved = compute_split(items, settings, groups)
        write_split_file(path, dataset, carved, settings)
        log.info(
            "%s: wrote a new split to %s (commit it so every run uses the same images)",
            dataset,
            path,
        )
    return {**official, **{item.id: carved[item.id] for item in undecided}}


def split_name(dataset: str, root: str | Path | None) -> str:
    """The split file's base name: the dataset, or ``csv-<stem>`` for a generic CSV (one per table)."""
    if dataset == "csv" and root:
        path = Path(root)
        return f"csv-{path.stem if path.suffix else path.name}"
    return dataset


def keep_in_train(dataset: str) -> frozenset[str]:
    """Ids that must stay in train: the IDRiD images the embedded dataset uses as backgrounds."""
    if dataset != "idrid":
        return frozenset()
    return frozenset(f"idrid/grading/train/{name}" for name in BACKGROUND_IDRID_IDS)
