"""Soak: a long training run sampled for resident memory, open files and threads (Linux: /proc).

Run from the repository root (docs/RELIABILITY.md):
    python bench/soak.py --minutes 30 --interval 10 --out runs_soak
    python bench/soak.py --minutes 0.5 --interval 2 --out /tmp/soak -- data.n_train=32 data.n_val=8

Starts ``train.py --name soak`` (default: the demo preset's joint stage for 1000 epochs, a recovery
checkpoint every 2 minutes, so steps, validation, checkpoints and the loader all repeat; extra
``key=value`` overrides after ``--`` come last), reads ``/proc/<pid>/status`` (VmRSS, Threads) and
``/proc/<pid>/fd`` every ``--interval`` seconds, and after ``--minutes`` stops it with SIGTERM,
which must save and exit 75. RSS growth compares the median of the ``--window`` samples that follow
the first epoch's end (log.csv's first row) with the median of the last ``--window`` samples (a
checkpoint being written lifts single samples). Prints one JSON object; the per-sample series goes
to ``<out>/soak_samples.csv``.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import commit
from bench.machine import cpu_name
from engine.reliability import PREEMPTED_EXIT_CODE

DEFAULTS = ["--stage", "joint", "train.joint.epochs=1000", "train.checkpoint_every_minutes=2"]


def sample(pid: int) -> dict | None:
    """RSS (MiB), threads and open file descriptors of ``pid``; None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "threads": int(fields["Threads"]),
        "fds": fds,
    }


def rows_logged(run: Path) -> int:
    log = run / "log.csv"
    return max(len(log.read_text().splitlines()) - 1, 0) if log.is_file() else 0


def parse_args() -> argparse.Namespace:
    """The command line: duration, sampling interval, runs root, pass criteria, overrides."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path("runs_soak"), help="runs root")
    parser.add_argument(
        "--growth-limit", type=float, default=5.0, help="RSS growth (%%) that fails the soak"
    )
    parser.add_argument(
        "--window", type=int, default=6, help="samples in the start and end medians"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser.parse_args()


def run_and_sample(
    args: argparse.Namespace, argv: list[str], run: Path
) -> tuple[list[dict], int, bool, float]:
    """Run and sample train.py, SIGTERM after --minutes: (samples, exit code, ended early, start)."""
    with (args.out / "soak.log").open("w") as output:
        process = subprocess.Popen(
            [sys.executable, "train.py", *argv], cwd=ROOT, stdout=output, stderr=subprocess.STDOUT
        )
        started = time.time()
        samples = []
        while time.time() - started < 60 * args.minutes and process.poll() is None:
            current = sample(process.pid)
            if current is not None and current["rss_mib"] > 0:  # 0: not yet exec'd
                samples.append(
                    {"t_s": round(time.time() - started, 1), "epochs": rows_logged(run), **current}
                )
            time.sleep(args.interval)
        finished_early = process.poll() is not None
        if not finished_early:
            process.send_signal(signal.SIGTERM)
        code = process.wait()
    return samples, code, finished_early, started


def write_samples(path: Path, samples: list[dict]) -> None:
    """Write the per-sample series as CSV (soak_samples.csv)."""
    with path.open("w") as file:
        file.write("t_s,epochs,rss_mib,threads,fds\n")
        file.writelines(
            f"{s['t_s']},{s['epochs']},{s['rss_mib']:.1f},{s['threads']},{s['fds']}\n"
            for s in samples
        )


def summarize(
    args: argparse.Namespace,
    samples: list[dict],
    code: int,
    finished_early: bool,
    started: float,
    argv: list[str],
) -> dict:
    """The JSON summary: RSS growth, threads and fds after the first epoch vs at the end, pass."""
    run = args.out / "soak"
    after_first_epoch = [s for s in samples if s["epochs"] >= 1]
    base = after_first_epoch[0] if after_first_epoch else None
    last = samples[-1] if samples else None
    rss_start = (
        statistics.median(s["rss_mib"] for s in after_first_epoch[: args.window])
        if after_first_epoch
        else None
    )
    rss_end = (
        statistics.median(s["rss_mib"] for s in after_first_epoch[-args.window :])
        if after_first_epoch
        else None
    )
    growth = 100 * (rss_end / rss_start - 1) if rss_start else None
    result = {
        "minutes": round((time.time() - started) / 60, 1),
        "samples": len(samples),
        "epochs": rows_logged(run),
        "rss_after_first_epoch_mib": round(rss_start, 1) if rss_start else None,
        "rss_end_mib": round(rss_end, 1) if rss_end else None,
        "rss_max_mib": round(max(s["rss_mib"] for s in samples), 1) if samples else None,
        "rss_growth_pct": round(growth, 2) if growth is not None else None,
        "threads_after_first_epoch": base["threads"] if base else None,
        "threads_end": last["threads"] if last else None,
        "fds_after_first_epoch": base["fds"] if base else None,
        "fds_end": last["fds"] if last else None,
        "exit_code": code,
        "preempted_cleanly": code == PREEMPTED_EXIT_CODE,
        "finished_early": finished_early,
        "command": "python train.py " + " ".join(argv),
        "cpu": cpu_name(),
        "commit": commit(),
    }
    result["pass"] = bool(
        growth is not None
        and growth < args.growth_limit
        and last["threads"] <= base["threads"]
        and last["fds"] <= base["fds"]
        and result["preempted_cleanly"]
    )
    return result


def main() -> None:
    args = parse_args()
    run = args.out / "soak"
    if run.exists():
        sys.exit(f"error: {run} exists: choose another --out")
    args.out.mkdir(parents=True, exist_ok=True)
    argv = ["--quiet", "--name", "soak", *DEFAULTS, *args.overrides, f"run.out_dir={args.out}"]
    samples, code, finished_early, started = run_and_sample(args, argv, run)
    write_samples(args.out / "soak_samples.csv", samples)
    print(json.dumps(summarize(args, samples, code, finished_early, started, argv)))


if __name__ == "__main__":
    main()
