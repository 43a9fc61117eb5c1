"""The command line of a table's ``run.py`` (``Compared Methods/``, ``Ablation study/``, the
scripts/idrid_*.py tables): options to engine/table_runner.py's :func:`run_table`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from data.datasets import DATASETS
from engine.config import ConfigError, default_preset
from engine.runtime import available_cpus
from engine.table_runner import run_table
from engine.table_spec import TABLE_PRESET, load_table, parse_seeds, select_rows

DEFAULT_SEEDS = 3
# --quick: a smoke run of the whole table in a few minutes (tiny images, one step per epoch).
QUICK = (
    "data.hr_size=64",
    "data.n_train=16",
    "data.n_val=8",
    "data.n_test=8",
    "data.crop_size=32",
    "data.backgrounds=retina",
    "model.isr_channels=8",
    "model.isr_blocks=1",
    "model.seg_width=0.25",
    "model.grader_hidden=32",
    "train.max_steps_per_epoch=2",
    *[
        f"train.{stage}.{key}={value}"
        for stage in ("isr", "seg", "cls", "joint")
        for key, value in (("epochs", 1), ("batch_size", 4))
    ],
)


def default_jobs(device: str | None) -> int:
    """Two single-thread runs at once on a CPU with 2+ cores; one run at a time on a GPU."""
    on_gpu = (device or "auto") != "cpu" and (
        torch.cuda.is_available() or (device or "").startswith("cuda")
    )
    return 1 if on_gpu else min(2, available_cpus())


def get_args_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument(
        "--seeds",
        default=str(DEFAULT_SEEDS),
        help=f"seed count (run.seed 0..N-1) or comma list (default {DEFAULT_SEEDS})",
    )
    parser.add_argument("--rows", help="comma list of rows to run (default: all)")
    parser.add_argument(
        "--config",
        help="YAML preset (default configs/table.yaml; configs/<dataset>.yaml with --dataset)",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="a public dataset instead of the embedded one"
    )
    parser.add_argument("--data-root", help="the public dataset's folder, as unpacked")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny smoke run of every row (64 px, 2 steps per stage)",
    )
    parser.add_argument("--device", help="cuda, cpu, mps ... (default: auto)")
    parser.add_argument(
        "--jobs",
        type=int,
        help="runs trained at once, each with cores/jobs torch threads (default: 1 with a GPU, "
        "else 2 on a CPU with 2 or more cores)",
    )
    parser.add_argument(
        "--split",
        default="test",
        choices=("test", "val"),
        help="split every run is tested on (default test; val for a dataset copy without its test set)",
    )
    parser.add_argument(
        "--reuse-from",
        action="append",
        default=[],
        metavar="TABLE_DIR",
        help="another table's output folder (repeatable): runs trained there with exactly a row's "
        "settings are copied instead of trained, e.g. the ablation's full rows for deepmt_dr",
    )
    parser.add_argument("--list", action="store_true", help="print the rows and exit")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides for every row"
    )
    return parser


def _overrides(args: argparse.Namespace) -> list[str]:
    """--quick's, then --dataset / --data-root / --device as overrides, then the given ones."""
    overrides = list(QUICK) if args.quick else []
    for flag, key in (
        (args.dataset, "data.dataset"),
        (args.data_root, "data.root"),
        (args.device, "run.device"),
    ):
        if flag:
            overrides.append(f"{key}={flag}")
    return overrides + args.overrides


def _progress_bar(quiet: bool) -> Callable | None:
    if quiet:
        return None
    from tqdm import tqdm

    def progress(iterable, **kw):
        return tqdm(iterable, leave=False, dynamic_ncols=True, **kw)

    return progress


def table_main(
    argv: list[str] | None,
    rows_file: str | Path,
    description: str,
    default_out: str,
    script: str,
    defaults: Sequence[str] = (),
) -> int:
    """The body of a table's ``run.py`` (``script``: its path, for the command line in table.md).

    ``defaults``: options the script implies, parsed before ``argv`` (which may repeat them to
    override) and left out of the recorded command line.
    """
    argv = sys.argv[1:] if argv is None else argv
    args = get_args_parser(description, default_out).parse_args([*defaults, *argv])
    spec = load_table(rows_file)
    rows = select_rows(spec, args.rows)
    if args.list:
        for row in rows:
            print(
                f"{row.name:<16} --method {row.method} {' '.join(row.overrides)}\n{'':<16} {row.summary}"
            )
        return 0
    preset = args.config or (default_preset(args.dataset) if args.dataset else TABLE_PRESET)
    seeds = parse_seeds(args.seeds)
    command = shlex.join(["python", script, *argv])
    started = time.perf_counter()
    jobs = args.jobs if args.jobs is not None else default_jobs(args.device)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    progress = None if jobs > 1 else _progress_bar(args.quiet)
    out_dir = run_table(
        spec,
        rows,
        seeds,
        args.out,
        preset,
        _overrides(args),
        progress,
        command,
        jobs,
        args.split,
        args.reuse_from,
    )
    print(
        f"{spec.title}: {len(rows)} rows x {len(seeds)} seeds in {(time.perf_counter() - started) / 60:.1f} min; "
        f"{out_dir / 'table.md'}, {out_dir / 'table.png'}, {out_dir / 'results.csv'}"
    )
    return 0
