"""Which images train, validate and test: the dataset's own splits, else a committed split file.

A dataset's own split names map to roles: ``train`` -> train, ``valid`` -> val, ``test`` -> test.
What the dataset leaves open is carved out deterministically at the patient level (both eyes of
an EyePACS patient stay together), stratified by part and grade:

- ``train`` images of a dataset without a ``valid`` split: ``val_fraction`` of them become val;
- ``all`` images (no split at all): ``val_fraction`` val, ``test_fraction`` test, the rest train.

The result is written once to ``splits/<dataset>.csv`` (commit it: everyone then trains and tests
on the same images) with a SHA-256 of its rows, and read back on every later run.
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

from data.records import DataError
from data.synthetic.backgrounds import BACKGROUND_IDRID_IDS

log = logging.getLogger(__name__)

ROLES = ("train", "val", "test")
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


def _carve(items: list[Labelled], fractions: dict[str, float], settings: SplitSettings) -> dict[str, str]:
    """Patient-level stratified assignment of ``items`` to train and the roles in ``fractions``."""
    patients: dict[str, list[Labelled]] = defaultdict(list)
    for item in items:
        patients[item.patient].append(item)
    strata: dict[tuple[str, int], list[str]] = defaultdict(list)
    for patient, members in patients.items():
        if any(member.id in settings.keep_in_train for member in members):
            continue
        part = min(member.part for member in members)
        strata[(part, max(member.grade for member in members))].append(patient)
    keys = sorted(strata)
    rng = np.random.default_rng(settings.seed)
    shuffled = {key: [sorted(strata[key])[i] for i in rng.permutation(len(strata[key]))] for key in keys}
    roles = {item.id: "train" for item in items}
    start = dict.fromkeys(keys, 0)
    for role, fraction in fractions.items():
        for key, quota in zip(keys, _quotas([len(strata[key]) for key in keys], fraction)):
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
            raise DataError(f"{item.id}: unknown split name {item.split!r} (expected train, valid, test or all)")
    return official, open_items


def compute_split(items: Iterable[Labelled], settings: SplitSettings) -> dict[str, str]:
    """``{id: role}`` for the items the dataset's own splits leave open (see module doc)."""
    items = list(items)
    own_splits = {item.split for item in items}
    _, open_items = _partition(items)
    roles: dict[str, str] = {}
    if open_items["train"]:
        roles.update(_carve(open_items["train"], {"val": settings.val_fraction}, settings))
    if open_items["all"]:
        fractions = {"val": settings.val_fraction}
        if "test" not in own_splits:
            fractions["test"] = settings.test_fraction
        roles.update(_carve(open_items["all"], fractions, settings))
    return roles


def _body(roles: dict[str, str]) -> str:
    return "id,split\n" + "".join(f"{sample_id},{roles[sample_id]}\n" for sample_id in sorted(roles))


def _digest(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def write_split_file(path: Path, dataset: str, roles: dict[str, str], settings: SplitSettings) -> None:
    body = _body(roles)
    header = (
        f"{HEADER_PREFIX} dataset={dataset} seed={settings.seed} val_fraction={settings.val_fraction} "
        f"test_fraction={settings.test_fraction} sha256={_digest(body)}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(header + body, encoding="utf-8")
    temporary.replace(path)


def read_split_file(path: Path) -> dict[str, str]:
    """``{id: role}`` from a split file, checking its hash (an edited file is refused, not trusted)."""
    text = path.read_text(encoding="utf-8")
    header, _, body = text.partition("\n")
    fields = dict(part.split("=", 1) for part in header.split() if "=" in part)
    if not header.startswith(HEADER_PREFIX) or "sha256" not in fields:
        raise DataError(f"{path} is not a DeepMT-DR split file (first line must start with '{HEADER_PREFIX}')")
    if _digest(body) != fields["sha256"]:
        raise DataError(f"{path}: rows do not match the recorded sha256 (edited or corrupt); delete it to make a new split")
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
) -> dict[str, str]:
    """The role of every item: its own split where the dataset has one; else from the split file,
    computed and written there on the first run."""
    items = list(items)
    official, open_items = _partition(items)
    undecided = [item for group in open_items.values() for item in group]
    if not undecided:
        return official
    path = Path(split_file) if split_file else default_split_file(dataset)
    if path.is_file():
        carved = read_split_file(path)
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
        carved = compute_split(items, settings)
        write_split_file(path, dataset, carved, settings)
        log.info("%s: wrote a new split to %s (commit it so every run uses the same images)", dataset, path)
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
