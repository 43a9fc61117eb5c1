"""Chaos run: SIGKILL a training run at random moments, resume it each time, compare with a run never killed.

Run from the repository root (docs/RELIABILITY.md):
    python bench/chaos.py --kills 20 --out runs_chaos                       # the demo preset
    python bench/chaos.py --kills 2 --out /tmp/chaos -- data.n_train=64 data.n_val=16 train.max_steps_per_epoch=8

1. ``train.py --name straight`` runs uninterrupted; its wall time T and its start-up time S (launch to
   the "starting the run" log line: imports, dataset rendering) are measured.
2. ``train.py --resume --name chaos`` is started and SIGKILLed after a random delay, uniform in
   [S / 2, S + 2 (T - S) / kills], ``--kills`` times (fewer if the run finishes first), then left to finish.
   Recovery checkpoints are on (``train.checkpoint_every_minutes=--every-minutes``).
3. Every model tensor of each ``<stage>_last.pt`` and ``last.pt`` must equal the straight run's bit
   for bit, and log.csv must hold the same rows (the seconds column aside).
4. Work lost per kill = kill time - max(the newest checkpoint's mtime, the time that process began
   training: its "resuming from" / "starting the run" line); a kill during start-up loses none.

Extra ``key=value`` overrides after ``--`` go to both runs. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch

from bench.common import commit
from bench.machine import cpu_name
from engine.checkpoint import load_checkpoint

STARTED = ("resuming from", "starting the run")


class Child:
    """``train.py`` in its own process group, its output lines time-stamped as they arrive."""

    def __init__(self, argv: list[str], log: Path) -> None:
        self.launched = time.time()
        self.training_since: float | None = None
        self.log = log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "train.py", "--quiet", *argv],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if self.training_since is None and any(marker in line for marker in STARTED):
                self.training_since = time.time()
            self.log.write(line)
        self.log.flush()

    def kill(self) -> float:
        """SIGKILL the process group (train.py and any loader workers it started); returns the time."""
        killed = time.time()
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        return killed

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self.reader.join()
        return code


def newest_checkpoint_time(folder: Path) -> float:
    times = [path.stat().st_mtime for path in folder.glob("*.pt")] if folder.is_dir() else []
    return max(times, default=0.0)


def log_rows(run: Path) -> list[dict]:
    with (run / "log.csv").open(newline="") as file:
        return [
            {key: value for key, value in row.items() if key != "seconds"}
            for row in csv.DictReader(file)
        ]


def compare(straight: Path, chaos: Path) -> list[str]:
    """``file: tensor`` for every model tensor that differs (or file that is missing)."""
    differing = []
    for path in sorted((straight / "checkpoints").glob("*last.pt")):
        other = chaos / "checkpoints" / path.name
        if not other.is_file():
            differing.append(f"{path.name}: missing")
            continue
        reference, state = load_checkpoint(path)["model"], load_checkpoint(other)["model"]
        differing += [
            f"{path.name}: {key}"
            for key, value in reference.items()
            if not torch.equal(value, state[key])
        ]
    return differing


def parse_args() -> argparse.Namespace:
    """The command line: kill count, runs root, preset, recovery interval, seed, overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs_chaos"),
        help="runs root (straight/ and chaos/ go there)",
    )
    parser.add_argument("--config", help="YAML preset (default: train.py's, configs/demo.yaml)")
    parser.add_argument(
        "--every-minutes",
        type=float,
        default=0.25,
        help="recovery checkpoint interval of the killed run",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args()


def run_straight(common: list[str], log: Path) -> tuple[float, float]:
    """Run the never-killed reference; returns its wall time and its start-up time (seconds)."""
    child = Child(["--name", "straight", *common], log)
    if child.wait() != 0:
        sys.exit(f"error: the straight run failed; see {log}")
    reference_seconds = time.time() - child.launched
    startup = (child.training_since or child.launched) - child.launched
    return reference_seconds, startup


def kill_once(chaos_argv: list[str], log: Path, delay: float, chaos_dir: Path) -> dict | None:
    """Start the resumed run and SIGKILL it after ``delay`` s; None if it finished first."""
    child = Child(chaos_argv, log)
    code = child.wait(delay)
    if code is not None:  # finished (or failed) before its kill
        if code != 0:
            sys.exit(f"error: a resumed run exited with {code}; see {log}")
        return None
    saved = newest_checkpoint_time(chaos_dir / "checkpoints")
    killed = child.kill()
    child.reader.join()
    since = child.training_since
    lost = 0.0 if since is None else killed - max(saved, since)
    return {"after_s": round(delay, 1), "during_startup": since is None, "lost_s": round(lost, 1)}


def run_chaos(
    args: argparse.Namespace, common: list[str], log: Path, startup: float, working: float
) -> list[dict]:
    """Kill the resumed run ``--kills`` times (fewer if it finishes), then let it finish."""
    rng = random.Random(args.seed)
    chaos_argv = [
        "--name",
        "chaos",
        "--resume",
        *common,
        f"train.checkpoint_every_minutes={args.every_minutes}",
    ]
    kills = []
    while len(kills) < args.kills:
        delay = rng.uniform(startup / 2, startup + 2 * working / args.kills)
        kill = kill_once(chaos_argv, log, delay, args.out / "chaos")
        if kill is None:
            break
        kills.append(kill)
    else:
        child = Child(chaos_argv, log)
        if child.wait() != 0:
            sys.exit(f"error: the final resumed run failed; see {log}")
    return kills


def report(
    args: argparse.Namespace,
    common: list[str],
    kills: list[dict],
    timings: tuple[float, float, float],
) -> dict:
    """The JSON summary: bitwise and log equality, work lost per kill, timings, machine."""
    reference_seconds, startup, chaos_seconds = timings
    straight_dir, chaos_dir = args.out / "straight", args.out / "chaos"
    differing = compare(straight_dir, chaos_dir)
    lost = [kill["lost_s"] for kill in kills if not kill["during_startup"]]
    return {
        "kills": len(kills),
        "killed_during_startup": sum(kill["during_startup"] for kill in kills),
        "bitwise_equal": not differing,
        "differing": differing[:20],
        "log_rows_equal": log_rows(straight_dir) == log_rows(chaos_dir),
        "recovery_interval_s": 60 * args.every_minutes,
        "median_lost_s": round(statistics.median(lost), 1) if lost else None,
        "max_lost_s": max(lost, default=None),
        "kill_log": kills,
        "straight_s": round(reference_seconds, 1),
        "startup_s": round(startup, 1),
        "chaos_s": round(chaos_seconds, 1),
        "overrides": common,
        "cpu": cpu_name(),
        "commit": commit(),
    }


def main() -> None:
    args = parse_args()
    common = [
        *(["--config", args.config] if args.config else []),
        *args.overrides,
        f"run.out_dir={args.out}",
    ]
    straight_dir, chaos_dir = args.out / "straight", args.out / "chaos"
    if straight_dir.exists() or chaos_dir.exists():
        sys.exit(f"error: {args.out} already holds straight/ or chaos/: choose another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "chaos.log"

    reference_seconds, startup = run_straight(common, log)
    working = max(reference_seconds - startup, 1.0)
    started = time.time()
    kills = run_chaos(args, common, log, startup, working)
    chaos_seconds = time.time() - started
    print(json.dumps(report(args, common, kills, (reference_seconds, startup, chaos_seconds))))


if __name__ == "__main__":
    main()
