"""The task-aware loss sweep of docs/RESULTS.md (issue 25), resumable anywhere.

    python scripts/task_aware_sweep.py                               # every arm, every seed not yet recorded
    python scripts/task_aware_sweep.py --arms l1_w0,l1_w10 --seeds 0 # some of them
    python scripts/task_aware_sweep.py --list                        # what is left, without training

Arms and settings: scripts/task_aware_sweep.yaml (the embedded data: no dataset needed; fp32 on
AVX2 kernels, so a seed's base run is the same on every machine). Each
finished (arm, seed) writes its record under docs/records/task_aware_sweep/<arm>/ (commit it); a
record already there is skipped. Checkpoints go to --out (runs/task_aware_sweep), never committed.
Tables: python scripts/results_tables.py.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Before torch loads: AVX2 kernels on every CPU kind, so that a seed's base run (fp32, one thread,
# scripts/task_aware_sweep.yaml) is bitwise the same on any machine; DEEPMTDR_NATIVE_KERNELS=1 opts out.
from engine.kernel_cap import cap_kernels_at_avx2  # noqa: E402  (imports no torch)

if os.environ.get("DEEPMTDR_NATIVE_KERNELS") != "1":
    cap_kernels_at_avx2()

from engine.cli import run_cli  # noqa: E402
from engine.cv_study import choose_names  # noqa: E402
from engine.seed_sweep import SweepRunner, load_sweep  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default=str(ROOT / "scripts/task_aware_sweep.yaml"))
    parser.add_argument("--arms", help="comma-separated arms (default: all, in the sweep's order)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: all)")
    parser.add_argument(
        "--out", default="runs/task_aware_sweep", help="run folders (checkpoints; not committed)"
    )
    parser.add_argument(
        "--records",
        default=str(ROOT / "docs/records/task_aware_sweep"),
        help="record folder (committed)",
    )
    parser.add_argument("--list", action="store_true", help="print what is left and stop")
    parser.add_argument(
        "overrides", nargs="*", help="extra key=value overrides for every run (a smoke test)"
    )
    args = parser.parse_args(argv)
    sweep = load_sweep(args.sweep)
    arms = choose_names(args.arms, list(sweep.arms), "arms")
    seeds = choose_names(args.seeds, list(sweep.seeds), "seeds")
    runner = SweepRunner(
        sweep,
        Path(args.out).resolve(),  # recorded in each run's config: the same from any folder
        Path(args.records).resolve(),
        tuple(args.overrides),
    )
    pending = runner.pending(arms, seeds)
    print(
        f"{len(pending)} of {len(arms) * len(seeds)} (arm, seed) runs left: "
        + ", ".join(f"{arm}/seed{seed}" for seed, arm in pending)
    )
    if args.list:
        return 0
    for arm, seed, provenance in runner.run_pending(arms, seeds):
        metrics = provenance["metrics"]
        print(
            f"recorded {arm}/seed{seed}: QWK {metrics['qwk']:.3f}, PSNR {metrics['psnr']:.2f} dB, "
            f"{provenance['wall_seconds']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
