"""Train DeepMT-DR. With no arguments: the embedded synthetic fundus dataset, sized for a CPU.

    python train.py                                   # configs/demo.yaml, all stages
    python train.py --config configs/paper.yaml --name paper
    python train.py --stage cls data.hr_size=256 train.cls.epochs=5
    python train.py --resume                          # continue runs/<name>/checkpoints/last.pt

Any config field can be overridden as dotted ``key=value`` (see engine/config.py).
"""
from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from engine.cli import run_cli
from engine.config import STAGES, load_config
from engine.trainer import Trainer

DEFAULT_CONFIG = "configs/demo.yaml"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"YAML preset (default {DEFAULT_CONFIG})")
    parser.add_argument("--stage", choices=(*STAGES, "all"), help="stage to train (default: train.stage of the config)")
    parser.add_argument("--name", help="run name: outputs go to <run.out_dir>/<name>/")
    parser.add_argument("--device", help="cuda, cpu, mps, cuda:1 ... (default: auto)")
    parser.add_argument("--resume", action="store_true", help="continue the run's checkpoints/last.pt")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. data.hr_size=128")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    overrides = list(args.overrides)
    for flag, key in ((args.stage, "train.stage"), (args.name, "run.name"), (args.device, "run.device")):
        if flag:
            overrides.append(f"{key}={flag}")
    config = load_config(args.config, overrides)
    progress = None if args.quiet else (lambda iterable, **kw: tqdm(iterable, leave=False, dynamic_ncols=True, **kw))
    trainer = Trainer(config, progress=progress)
    print(f"training {config.model.name} on {config.data.dataset} ({config.data.hr_size}px HR, x{config.data.scale}) "
          f"on {trainer.device}; stages: {', '.join(config.stages_to_run())}; run folder {config.run_dir}")
    run_dir = trainer.fit(resume=args.resume)
    print(f"done: checkpoints in {run_dir / 'checkpoints'}, log {run_dir / 'log.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
