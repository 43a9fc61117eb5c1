"""Disk footprint of a run's checkpoints: files, hard links, bytes on disk (docs/RELIABILITY.md).

Run from the repository root:
    python bench/footprint.py runs/demo

Hard links (``best.pt``, ``last.pt`` and stage files that share a checkpoint) count once in the
total. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path, help="a run folder (runs/<name>)")
    args = parser.parse_args()
    folder = args.run / "checkpoints"
    files, inodes = {}, {}
    for path in sorted(folder.glob("*.pt")):
        stat = path.stat()
        files[path.name] = {"mb": round(stat.st_size / 1e6, 1), "inode": stat.st_ino}
        inodes[stat.st_ino] = stat.st_size
    stages = sorted({name.split("_")[0] for name in files if "_" in name})
    print(
        json.dumps(
            {
                "run": str(args.run),
                "files": len(files),
                "distinct_checkpoints": len(inodes),
                "total_mb": round(sum(inodes.values()) / 1e6, 1),
                "per_stage": {
                    stage: sorted(name for name in files if name.startswith(f"{stage}_"))
                    for stage in stages
                },
                "sizes_mb": {name: info["mb"] for name, info in files.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
