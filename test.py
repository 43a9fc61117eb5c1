"""Evaluate a trained DeepMT-DR (or compared-method) checkpoint on the test split.

    python test.py                       # runs/demo/checkpoints/best.pt
    python test.py --name paper          # runs/paper/checkpoints/best.pt
    python test.py --checkpoint path/to/best.pt --split val
    python test.py --input hr            # grade the HR images: the upper bound SR aims at
    python test.py --tta                 # grade probabilities averaged over the four flips of each image
    python test.py --checkpoint deepmt_dr_idrid_small --dataset idrid --data-root ~/IDRiD --split val   # released weights, your copy

Every method is evaluated with the same metrics; without --input, the run's test.input decides
(HR for the hr_cls method, LR -> ISR -> grade otherwise).

Writes <run>/metrics.json and <run>/predictions_<split>.csv (<run>: the folder holding the checkpoint;
other splits, inputs or --tta get suffixed names, e.g. metrics_val_lr_tta.json), prints a table, and saves figures
(confusion matrix, ROC curves, lesion PR curves, per-sample panels) and report.html (all of them in
one file) in visualization_result/<name>/. --checkpoint also takes a release name
(pretrained_model/RELEASES.json, hash-checked); --dataset/--data-root evaluate it on your own copy
of a dataset instead of the folder recorded in the checkpoint. --print-config prints the
checkpoint's config as YAML and exits.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data.datasets import DATASETS
from engine.cli import run_cli
from engine.config import config_yaml
from engine.loading import checkpoint_config
from engine.release import resolve_checkpoint
from engine.testing import run_test
from evaluation.report import format_metrics_table


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", default="demo", help="run name under --out-dir (default demo)")
    parser.add_argument("--out-dir", default="runs", help="folder holding the runs (default runs)")
    parser.add_argument(
        "--checkpoint",
        help="checkpoint file, run folder or release name (default <out-dir>/<name>/checkpoints/best.pt)",
    )
    parser.add_argument(
        "--dataset",
        choices=("synthetic", *DATASETS),
        help="evaluate on this dataset (default: the checkpoint's)",
    )
    parser.add_argument(
        "--data-root",
        help="your copy of the dataset (default: the folder recorded in the checkpoint)",
    )
    parser.add_argument("--split", default="test", choices=("train", "val", "test"))
    parser.add_argument(
        "--input",
        choices=("lr", "hr"),
        help="lr: the system, LR -> SR -> grade; hr: grade the HR images (upper bound); "
        "default: the run's test.input",
    )
    parser.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        help="average the grade probabilities over the four flips of each image (default: the run's test.tta)",
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--amp",
        choices=("auto", "on", "off"),
        help="bf16/fp16 autocast (default: the checkpoint's run.amp, as predict.py; auto: where "
        "the hardware has it)",
    )
    parser.add_argument("--samples", type=int, default=4, help="per-sample figure panels to draw")
    parser.add_argument("--figures", default="visualization_result", help="figure folder root")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the checkpoint's config as YAML and exit (nothing is evaluated)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    checkpoint = (
        resolve_checkpoint(args.checkpoint)
        if args.checkpoint
        else Path(args.out_dir) / args.name / "checkpoints" / "best.pt"
    )
    if args.print_config:
        print(config_yaml(checkpoint_config(checkpoint)), end="")
        return 0
    progress = (
        None
        if args.quiet
        else (lambda iterable: tqdm(iterable, desc=f"testing {args.split}", leave=False))
    )
    metrics, run_dir = run_test(
        checkpoint,
        args.split,
        args.device,
        args.samples,
        args.figures,
        progress,
        args.input,
        dataset_name=args.dataset,
        data_root=args.data_root,
        tta=args.tta,
        amp=None if args.amp is None else {"auto": "auto", "on": True, "off": False}[args.amp],
    )
    print(format_metrics_table(metrics))
    print(f"results in {run_dir}, figures and report in {Path(metrics['report']).parent}")
    print(f"report: {metrics['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
