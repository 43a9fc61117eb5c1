"""``python -m data.summary``: what a dataset root holds, per part and split, as a table or one JSON object.

    python -m data.summary --dataset idrid --root ../shared/data/idrid [--json] [--check [--skip-bad]]

JSON: ``{"dataset": NAME, "parts": {"<part>/<split>": {"n", "grades", "ungradable"[, "masks"]}}}``;
``n`` counts usable images, ``grades`` every grade 0..C-1, ``masks`` (segmentation parts) the
images with a mask file per lesion. ``--check`` decodes every image: an unreadable one stops the
report naming the file, or with ``--skip-bad`` is left out and listed under ``"skipped"``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from data.cli import OneLineParser, run
from data.datasets import DATASETS, DatasetIndex, load_index
from data.datasets.base import image_size, read_image
from data.records import LESIONS, DataError


def check_images(index: DatasetIndex, skip_bad: bool, progress: bool = False) -> list[dict]:
    """Decode every image (and read every mask header); drop and return the bad ones when ``skip_bad``."""
    skipped, kept = [], []
    for record in tqdm(index.records, disable=not progress, desc=f"check {index.name}", unit="img"):
        try:
            image = read_image(record.image)
            for path in record.masks:
                if path is not None and image_size(path) != image.shape[:2]:
                    height, width = image_size(path)
                    raise DataError(
                        f"mask {path} is {width}x{height} but its image {record.image} is {image.shape[1]}x{image.shape[0]}"
                    )
        except DataError as error:
            if not skip_bad:
                raise DataError(f"{error} (pass --skip-bad to leave such images out)") from None
            skipped.append({"file": str(record.image), "reason": str(error)})
            continue
        kept.append(record)
    index.records = kept
    return skipped


def summarise(index: DatasetIndex) -> dict:
    """The JSON summary object of an index (see module docstring)."""
    parts: dict[str, dict] = {}
    for key in index.part_keys():
        part = key.split("/")[0]
        records = [record for record in index.records if record.key == key]
        grades = {str(grade): 0 for grade in range(index.num_classes)}
        for record in records:
            if record.grade >= 0:
                grades[str(record.grade)] += 1
        entry: dict = {
            "n": len(records),
            "grades": grades,
            "ungradable": int(index.ungradable.get(key, 0)),
        }
        if part == "segmentation":
            entry["masks"] = {
                name: sum(record.masks[i] is not None for record in records)
                for i, name in enumerate(LESIONS)
            }
        parts[key] = entry
    return {"dataset": index.name, "parts": parts}


def format_table(summary: dict) -> str:
    """A readable fixed-width table of a summary."""
    grade_keys = sorted(
        {grade for entry in summary["parts"].values() for grade in entry["grades"]}, key=int
    )
    header = [
        "part/split",
        "n",
        *[f"grade {grade}" for grade in grade_keys],
        "ungradable",
        *[f"mask {name}" for name in LESIONS],
    ]
    rows = []
    for key, entry in summary["parts"].items():
        masks = entry.get("masks")
        rows.append(
            [
                key,
                str(entry["n"]),
                *[str(entry["grades"].get(grade, 0)) for grade in grade_keys],
                str(entry["ungradable"]),
                *[str(masks[name]) if masks else "-" for name in LESIONS],
            ]
        )
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [f"dataset: {summary['dataset']}"]
    for row in [header, *rows]:
        lines.append(
            "  ".join(
                cell.rjust(width) if i else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(row, widths))
            )
        )
    for item in summary.get("skipped", []):
        lines.append(f"skipped {item['file']}: {item['reason']}")
    return "\n".join(lines)


def _build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="python -m data.summary", description="Report what a dataset root holds."
    )
    parser.add_argument("--dataset", required=True, choices=DATASETS)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--json", action="store_true", help="print exactly one JSON object")
    parser.add_argument(
        "--check", action="store_true", help="decode every image to find unreadable ones"
    )
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="with --check: leave unreadable images out and list them",
    )
    return parser


def _main(argv: Sequence[str] | None) -> int:
    args = _build_parser().parse_args(argv)
    index = load_index(args.dataset, args.root)
    skipped = check_images(index, args.skip_bad, progress=not args.json) if args.check else None
    summary = summarise(index)
    if skipped is not None:
        summary["skipped"] = skipped
    print(json.dumps(summary) if args.json else format_table(summary))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run("python -m data.summary", _main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
