"""Regenerate every results table in the docs from committed records (evaluation/results_tables.py).

python scripts/results_tables.py            # rewrite the tables in place
python scripts/results_tables.py --check    # exit 1, naming the file, if a table is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluation.results_tables import regenerate  # noqa: E402

DOCS = (
    "README.md",
    "docs/RESULTS.md",
    "docs/RELIABILITY.md",
    "docs/BENCHMARKS.md",
    "pretrained_model/README.md",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="change nothing; fail if a table is stale"
    )
    args = parser.parse_args(argv)
    stale = []
    for name in DOCS:
        path = ROOT / name
        text = path.read_text(encoding="utf-8")
        fresh = regenerate(text, ROOT)
        if fresh != text:
            stale.append(name)
            if not args.check:
                path.write_text(fresh, encoding="utf-8")
    if args.check and stale:
        print(
            f"stale tables in {', '.join(stale)}: run python scripts/results_tables.py",
            file=sys.stderr,
        )
        return 1
    print(
        "tables "
        + (
            "stale: " + ", ".join(stale)
            if stale and args.check
            else "up to date"
            if not stale
            else "rewritten: " + ", ".join(stale)
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
