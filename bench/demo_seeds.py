"""The demo (`python train.py` then `python test.py`) on several seeds, with its time profile.

Each seed trains ``configs/demo.yaml`` with ``run.seed=S`` in a fresh process (so the kernel cap
applies from torch's import), tests the final checkpoint on the embedded test split, and writes a
small record::

    <records>/<kernels>_<cpu slug>-<cpu kind>/seed<S>.json   wall times, profile, test metrics, provenance

``--kernels avx2`` caps PyTorch's and oneDNN's kernels at AVX2 (``ATEN_CPU_CAPABILITY=avx2``,
``ONEDNN_MAX_CPU_ISA=AVX2``), which is how a CPU with AVX-512 stands in for the AVX2-only kind:
``run.amp=auto`` then finds no bf16 units and runs fp32, as on that machine. A recorded seed is
skipped, so the runner continues where a previous session stopped. The tables in README.md
(range per CPU kind) and docs/BENCHMARKS.md (profile) are generated from these records.

    python bench/demo_seeds.py --seeds 0,1,2                  # this CPU's own kernels
    python bench/demo_seeds.py --seeds 0,1,2 --kernels avx2   # the AVX2-only kind
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.cv_study import machine_provenance  # noqa: E402
from engine.kernel_cap import AVX2_CAP  # noqa: E402
from evaluation.demo_tables import machine_label  # noqa: E402

RENDERED = re.compile(r"rendered (\d+) synthetic (\w+) samples in ([\d.]+) s")
CACHED = re.compile(r"cached the frozen nets' outputs of \d+ \w+ images in ([\d.]+) s")
SPEED = re.compile(r"speed: (run\.amp=\S+), .*")


def cpu_slug(cpu: str) -> str:
    """A folder-safe name of the CPU model (``AMD EPYC`` -> ``amd-epyc``)."""
    return re.sub(r"[^a-z0-9]+", "-", cpu.lower()).strip("-") or "cpu"


def stage_profile(log_csv: Path) -> dict[str, dict[str, float]]:
    """Seconds per stage from a run's ``log.csv``: training (epoch minus validation) and validation."""
    profile: dict[str, dict[str, float]] = {}
    with log_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            stage = profile.setdefault(row["stage"], {"train": 0.0, "validate": 0.0, "epochs": 0})
            seconds = float(row["seconds"])
            validate = float(row.get("val_seconds") or 0.0)
            stage["train"] += seconds - validate
            stage["validate"] += validate
            stage["epochs"] += 1
    return profile


def log_profile(text: str) -> dict[str, float]:
    """Rendering and frozen-output caching seconds from the training process's log."""
    found = {"render": 0.0, "cache": 0.0}
    for match in RENDERED.finditer(text):
        found["render"] += float(match.group(3))
    for match in CACHED.finditer(text):
        found["cache"] += float(match.group(1))
    return found


def run_logged(command: list[str], env: dict[str, str], log_path: Path) -> tuple[float, str]:
    """Run ``command`` (its output to ``log_path``); wall seconds and the output, or a one-line
    error naming the command and the log."""
    started = time.perf_counter()
    with log_path.open("w") as log:
        done = subprocess.run(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - started
    text = log_path.read_text(errors="replace")
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed (exit {done.returncode}); see {log_path}")
    return seconds, text


def test_summary(metrics: dict) -> dict[str, float]:
    grading, sr = metrics["grading"], metrics["sr"]
    return {
        "qwk": grading["qwk"],
        "accuracy": grading["accuracy"],
        "macro_auc": grading["macro_auc"],
        "referable_auc": grading["referable_auc"],
        "psnr_sr": sr["sr"]["psnr"],
        "psnr_bicubic": sr["bicubic"]["psnr"],
    }


def run_name(kernels: str, seed: int) -> str:
    """The run folder of one seed under ``--out``."""
    return f"demo_{kernels}_seed{seed}"


def run_seed(seed: int, kernels: str, out: Path, record_path: Path, overrides: list[str]) -> dict:
    """Train and test one seed in fresh processes; write and return its record."""
    env = dict(os.environ)
    if kernels == "avx2":
        env.update(AVX2_CAP)
    name = run_name(kernels, seed)
    run_dir = out / name
    out.mkdir(parents=True, exist_ok=True)
    # The runner's folder and seed come last, so no override moves them.
    train = [sys.executable, "train.py", "--name", name, *overrides]
    train += [f"run.out_dir={out}", f"run.seed={seed}"]
    train_seconds, train_log = run_logged(train, env, out / f"{name}.train.log")
    checkpoint = run_dir / "checkpoints" / "best.pt"
    test = [
        sys.executable,
        "test.py",
        "--checkpoint",
        str(checkpoint),
        "--figures",
        str(out / name),
    ]
    test_seconds, _ = run_logged(test, env, out / f"{name}.test.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    speed = SPEED.search(train_log)
    record = {
        "seed": seed,
        "kernels": kernels,
        "precision": speed.group(1) if speed else "unknown",
        "overrides": overrides,
        "train_seconds": round(train_seconds, 1),
        "test_seconds": round(test_seconds, 1),
        "profile": {
            **{key: round(value, 1) for key, value in log_profile(train_log).items()},
            "stages": {
                stage: {key: round(value, 1) for key, value in values.items()}
                for stage, values in stage_profile(run_dir / "log.csv").items()
            },
        },
        "test": test_summary(metrics),
        "load_average_at_end": os.getloadavg()[0],
        **machine_provenance(),
    }
    record_path.parent.mkdir(parents=True, exist_ok=True)
    partial = record_path.with_suffix(".json.partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(record_path)
    return record


def val_qwk_by_epoch(log_csv: Path, stage: str) -> list[float]:
    """Validation QWK of each validated epoch of ``stage`` in a run's ``log.csv``."""
    with log_csv.open(newline="") as file:
        return [
            float(row["val_qwk"])
            for row in csv.DictReader(file)
            if row["stage"] == stage and row.get("val_qwk")
        ]


def lever_record(name: str, record: dict, run_dir: Path) -> dict:
    """A seed's record in the form of ``docs/records/demo_levers`` (one row of the levers table):
    the overrides tried, validation QWK per cls and joint epoch, test metrics, wall time."""
    log = run_dir / "log.csv"
    return {
        "name": name,
        "overrides": record["overrides"],
        "seed": record["seed"],
        "kernels": "capped at AVX2" if record["kernels"] == "avx2" else "native",
        "precision": record["precision"],
        "val_qwk_cls_by_epoch": val_qwk_by_epoch(log, "cls"),
        "val_qwk_joint_by_epoch": val_qwk_by_epoch(log, "joint"),
        "test": record["test"],
        "train_wall_seconds": record["train_seconds"],
        "load": f"1-min load {record['load_average_at_end']:.1f} at the end",
        "date": time.strftime("%Y-%m-%d"),
        **{
            key: record[key]
            for key in ("cpu", "cpu_family", "cpu_flags", "commit")
            if key in record
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seeds",
        type=lambda text: [int(seed) for seed in text.split(",") if seed.strip()],
        default=[0, 1, 2],
        help="comma-separated run.seed values",
    )
    parser.add_argument("--kernels", choices=("native", "avx2"), default="native")
    parser.add_argument("--out", default="runs/demo_seeds", help="run folders (not committed)")
    parser.add_argument("--records", default=str(ROOT / "docs/records/demo"))
    parser.add_argument(
        "--lever",
        metavar="NAME",
        help="a trial of other settings: also write <NAME>_seed<S>.json into --lever-records",
    )
    parser.add_argument("--lever-records", default=str(ROOT / "docs/records/demo_levers"))
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = parser.parse_args(argv)
    machine = machine_provenance()
    cpu = machine["cpu"]
    folder = Path(args.records) / f"{args.kernels}_{cpu_slug(machine_label(machine))}"
    for seed in args.seeds:
        record_path = folder / f"seed{seed}.json"
        if record_path.is_file():
            print(f"seed {seed}: recorded in {record_path}, skipped")
            continue
        out = Path(args.out).resolve()
        record = run_seed(seed, args.kernels, out, record_path, args.overrides)
        if args.lever:
            lever = lever_record(args.lever, record, out / run_name(args.kernels, seed))
            lever_path = Path(args.lever_records) / f"{args.lever}_seed{seed}.json"
            lever_path.parent.mkdir(parents=True, exist_ok=True)
            lever_path.write_text(json.dumps(lever, indent=2) + "\n")
        test = record["test"]
        print(
            f"seed {seed} ({args.kernels} kernels, {record['precision']}, {cpu}): train "
            f"{record['train_seconds']:.0f} s, test QWK {test['qwk']:.3f}, PSNR "
            f"{test['psnr_sr']:.2f} dB (bicubic {test['psnr_bicubic']:.2f}); {record_path}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
