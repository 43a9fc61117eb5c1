"""Train DeepMT-DR or a compared method. With no arguments: DeepMT-DR on the embedded synthetic
fundus dataset, sized for a CPU.

    python train.py                                   # configs/demo.yaml, all stages
    python train.py --method lr_cls --name lr_cls     # a compared method (engine/methods.py)
    python train.py --config configs/paper.yaml --name paper
    python train.py --stage cls data.hr_size=256 train.cls.epochs=5
    python train.py --resume                          # continue the run's newest checkpoint, or start it
    python train.py --dataset idrid --data-root ../shared/data/idrid --config configs/idrid_small.yaml
    torchrun --nproc_per_node 8 train.py --config configs/ddr.yaml --dataset ddr --data-root DDR

Under torchrun every process trains its share of each global batch (train.<stage>.batch_size
is the global batch) and rank 0 writes the run folder; build a large dataset's cache first
with python -m data.prepare, since the other processes wait for it.

With --dataset and no --config, configs/<dataset>.yaml is used when it exists, else
configs/paper.yaml. The dataset's preprocessing cache is built on the first run
(python -m data.prepare does the same by hand).

--method NAME applies a named recipe (Compared Methods/README.md) over the preset; the
key=value overrides still come last. Any config field can be overridden as dotted ``key=value``
(see engine/config.py); --print-config prints the resolved config as YAML and exits.

Reliability (docs/RELIABILITY.md): a recovery checkpoint is written inside each epoch every
train.checkpoint_every_minutes (default 10) / train.checkpoint_every_steps; --resume continues
the newest checkpoint or, when there is none, starts the run, so a requeued job can always pass
it. SIGTERM or SIGINT saves a recovery checkpoint at the next step boundary and exits 75.

Exit codes: 0 done; 2 bad input, a bad checkpoint, the run folder in use by another process, or
a run that cannot go on (out of memory, only non-finite steps); 75 stopped by SIGTERM/SIGINT
after saving (rerun the same command with --resume).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from data.datasets import DATASETS
from engine import distributed
from engine.builders import ensure_cache
from engine.cli import run_cli
from engine.config import DEFAULT_PRESET, STAGES, config_yaml, default_preset, load_config
from engine.methods import METHODS
from engine.reliability import PREEMPTED_EXIT_CODE, Preempted
from engine.trainer import Trainer


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        help=f"YAML preset (default configs/{Path(DEFAULT_PRESET).name}, or configs/<dataset>.yaml "
        "with --dataset); a name like demo or demo.yaml is looked up in the repository's configs/",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        help="a compared method's recipe (default: DeepMT-DR, or the preset's method)",
    )
    parser.add_argument(
        "--dataset", choices=DATASETS, help="train on a public dataset instead of the embedded one"
    )
    parser.add_argument("--data-root", help="the public dataset's folder, as unpacked")
    parser.add_argument(
        "--stage",
        choices=(*STAGES, "all"),
        help="stage to train (default: train.stage of the config)",
    )
    parser.add_argument("--name", help="run name: outputs go to <run.out_dir>/<name>/")
    parser.add_argument("--device", help="cuda, cpu, mps, cuda:1 ... (default: auto)")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run's newest checkpoint (recovery.pt inside an epoch, else last.pt); "
        "start the run when it has none",
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="resume without checking the checkpoint's SHA-256 (faster on very large files)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config as YAML (what the run folder's config.yaml holds) and exit",
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.hr_size=128"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    overrides = list(args.overrides)
    flags = (
        (args.dataset, "data.dataset"),
        (args.data_root, "data.root"),
        (args.stage, "train.stage"),
        (args.name, "run.name"),
        (args.device, "run.device"),
    )
    for flag, key in flags:
        if flag:
            overrides.append(f"{key}={flag}")
    config = load_config(args.config or default_preset(args.dataset), overrides, method=args.method)
    if args.print_config:
        print(config_yaml(config), end="")
        return 0
    progress = (
        None
        if args.quiet
        else (lambda iterable, **kw: tqdm(iterable, leave=False, dynamic_ncols=True, **kw))
    )
    launched_by_torchrun = "WORLD_SIZE" in os.environ
    if (
        config.data.dataset != "synthetic" and not launched_by_torchrun
    ):  # under torchrun rank 0 builds it in fit()
        print(f"dataset cache: {ensure_cache(config, progress=not args.quiet)}")
    try:
        trainer = Trainer(
            config, progress=progress if int(os.environ.get("RANK", "0")) == 0 else None
        )
        world = trainer.world
        if world.is_main:
            processes = f" x {world.size} processes" if world.distributed else ""
            print(
                f"training {config.method} on {config.data.dataset} ({config.data.hr_size}px HR, x{config.data.scale}) "
                f"on {trainer.device}{processes}; stages: {', '.join(config.stages_to_run())}; run folder {config.run_dir}"
            )
        try:
            run_dir = trainer.fit(resume=args.resume, verify=not args.no_verify)
        except Preempted as stop:
            if world.is_main:
                print(f"preempted: {stop}", file=sys.stderr)
            return PREEMPTED_EXIT_CODE
        if world.is_main:
            print(f"done: checkpoints in {run_dir / 'checkpoints'}, log {run_dir / 'log.csv'}")
    finally:
        distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
