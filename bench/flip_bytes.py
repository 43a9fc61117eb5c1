"""Flip single bytes of a checkpoint and count how many loads notice (docs/RELIABILITY.md).

Run from the repository root:
    python bench/flip_bytes.py runs/demo/checkpoints/last.pt --flips 1000 [--seed 0]
    python bench/flip_bytes.py runs/demo/checkpoints/last.pt --flips 1000 --legacy   # the format before checksums

Each trial XORs one byte, at a uniformly random offset, with a random non-zero value in a scratch
copy (the checkpoint itself is never written), loads the copy and puts the byte back. A trial is
detected when the load fails; an undetected one either loaded weights that differ from the
original's (silent corruption) or loaded identical weights. Default: the current format, read by
``engine.checkpoint.load_checkpoint`` (SHA-256 checked). ``--legacy``: the same state written as a
bare torch zip (format_version 1) and read as the code before checksums read it (``torch.load(...,
weights_only=True)`` and a key check). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import commit
from bench.machine import cpu_name
from engine.checkpoint import REQUIRED_KEYS, CheckpointError, load_checkpoint


def load_legacy(path: Path) -> dict:
    """What load_checkpoint did before checksums (format_version 1)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a DeepMT-DR checkpoint")
    return state


def same_weights(state: dict, reference: dict) -> bool:
    model = state.get("model")
    if not isinstance(model, dict) or model.keys() != reference.keys():
        return False
    return all(
        isinstance(model[key], torch.Tensor)
        and model[key].shape == value.shape
        and torch.equal(model[key], value)
        for key, value in reference.items()
    )


def parse_args() -> argparse.Namespace:
    """The command line: checkpoint, number of flips, seed, --legacy and the scratch folder."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--flips", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--legacy",
        action="store_true",
        help="measure the bare torch zip format of before checksums",
    )
    parser.add_argument(
        "--scratch",
        type=Path,
        help="folder for the scratch copy (default: /dev/shm when there, else the temp folder)",
    )
    return parser.parse_args()


def flip_trials(
    copy: Path, size: int, load, reference: dict, flips: int, rng: random.Random
) -> dict:
    """Flip one random byte of ``copy`` per trial, load it, restore it; counts the outcomes."""
    detected, changed, unchanged, undetected_offsets, errors = 0, 0, 0, [], {}
    with copy.open("r+b") as file:
        for _ in range(flips):
            offset, mask = rng.randrange(size), rng.randrange(1, 256)
            file.seek(offset)
            original = file.read(1)[0]
            file.seek(offset)
            file.write(bytes([original ^ mask]))
            file.flush()
            try:
                state = load(copy)
            except Exception as error:  # any failure to load is a detection
                detected += 1
                errors[type(error).__name__] = errors.get(type(error).__name__, 0) + 1
            else:
                undetected_offsets.append(offset)
                if same_weights(state, reference):
                    unchanged += 1
                else:
                    changed += 1
            file.seek(offset)
            file.write(bytes([original]))
            file.flush()
    return {
        "detected": detected,
        "changed": changed,
        "unchanged": unchanged,
        "undetected_offsets": undetected_offsets,
        "errors": errors,
    }


def measure(args: argparse.Namespace, reference_state: dict, reference: dict, folder: Path) -> dict:
    """Write the scratch copy in the measured format, time a clean load and run the trials."""
    copy = folder / "copy.pt"
    if args.legacy:
        torch.save({**reference_state, "format_version": 1}, copy)
        load = load_legacy
    else:
        shutil.copyfile(args.checkpoint, copy)
        load = load_checkpoint
    size = copy.stat().st_size
    started = time.perf_counter()
    load(copy)
    clean_load = time.perf_counter() - started
    rng = random.Random(args.seed)
    started = time.perf_counter()
    counts = flip_trials(copy, size, load, reference, args.flips, rng)
    seconds = time.perf_counter() - started
    return {**counts, "size": size, "clean_load": clean_load, "seconds": seconds}


def report(args: argparse.Namespace, result: dict) -> dict:
    """The JSON summary: format, detection counts, timings, machine."""
    return {
        "checkpoint": str(args.checkpoint),
        "format": "legacy bare torch zip (format_version 1)"
        if args.legacy
        else "checksummed (format_version 2)",
        "bytes": result["size"],
        "flips": args.flips,
        "seed": args.seed,
        "detected": result["detected"],
        "detected_pct": round(100 * result["detected"] / max(args.flips, 1), 2),
        "undetected_weights_changed": result["changed"],
        "undetected_weights_same": result["unchanged"],
        "undetected_offsets": result["undetected_offsets"][:20],
        "errors": result["errors"],
        "clean_load_seconds": round(result["clean_load"], 3),
        "seconds": round(result["seconds"], 1),
        "cpu": cpu_name(),
        "torch": torch.__version__,
        "commit": commit(),
    }


def main() -> None:
    args = parse_args()
    reference_state = load_checkpoint(args.checkpoint)
    reference = reference_state["model"]
    scratch_root = args.scratch or (Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    folder = Path(tempfile.mkdtemp(prefix="flip_bytes_", dir=scratch_root))
    try:
        result = measure(args, reference_state, reference, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(report(args, result)))


if __name__ == "__main__":
    main()
