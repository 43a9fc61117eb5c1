"""One command per table: train and test every (row, seed), resumably, then write the table.

Shared by ``Compared Methods/run.py`` and ``Ablation study/run.py``. A table is a ``rows.yaml``
next to its script: a title, an optional reference row (the ΔQWK column), and rows, each a method
of ``engine/methods.py`` plus ``key=value`` overrides, i.e. exactly
``python train.py --method METHOD OVERRIDES``. Output folder::

    results.csv  table.md  table.png          (rewritten after every finished run)
    runs/<row>_seed<k>/                       ordinary run folders (config.yaml, log.csv, checkpoints/, metrics.json)
    figures/<row>_seed<k>/                    confusion matrix, ROC and lesion PR curves of the test split

Resuming: a (row, seed) already in ``results.csv`` or whose run folder holds its metrics file
(``metrics.json``; ``metrics_val_lr.json`` with ``--split val``) is
not trained again; one with ``checkpoints/last.pt`` or ``recovery.pt`` continues (as ``train.py --resume``);
a run folder with neither is started afresh. A run folder trained with other settings stops the
runner (ConfigError naming the differing keys) instead of being mixed into the table.
``--reuse-from OTHER_TABLE_DIR`` copies another table's finished run when its settings are exactly
a row's (the ablation's ``full`` rows are the compared methods' ``deepmt_dr`` rows).

``--jobs N`` (default 2 on a CPU, 1 on a GPU) trains N runs at once in spawned processes with
``cores // N`` torch threads each.
On a 2-core CPU two single-thread runs finish sooner than one two-thread run, and one thread per
process also avoids OpenMP oversubscription when other jobs share the machine (two-thread runs
were measured up to 30x slower on a loaded 2-core machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from data.datasets import DATASETS
from engine.builders import build_dataset
from engine.config import (
    CONFIG_DIR,
    Config,
    ConfigError,
    config_from_dict,
    default_preset,
    flat_keys,
    get_method,
    load_config,
)
from engine.runtime import available_cpus, cpu_model
from engine.tables import plot_bars, read_results, result_row, write_markdown, write_results
from engine.testing import metrics_file, run_test
from engine.trainer import Trainer

log = logging.getLogger(__name__)

TABLE_PRESET = CONFIG_DIR / "table.yaml"
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
# Settings that do not change results: a rerun may differ in them.
NOT_COMPARED = ("run.device", "run.threads", "data.num_workers", "data.prepare_workers")


@dataclass(frozen=True)
class Row:
    """A table row: ``train.py --method <method> <overrides>``."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    summary: str = ""


@dataclass(frozen=True)
class TableSpec:
    title: str
    rows: tuple[Row, ...]
    reference: str | None = None


def load_table(path: str | Path) -> TableSpec:
    """Read a ``rows.yaml``: ``title``, optional ``reference``, optional ``overrides`` (``key=value``
    strings put before every row's own, e.g. a shared starting checkpoint), ``rows: {name: {method,
    overrides, summary}}``."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read table rows {path}: {error}") from error
    if not isinstance(spec, dict) or not isinstance(spec.get("rows"), dict) or not spec["rows"]:
        raise ConfigError(f"{path}: expected a mapping with 'title' and a non-empty 'rows' mapping")
    shared = spec.get("overrides") or []
    if not _is_override_list(shared):
        raise ConfigError(
            f"{path}: overrides (for every row) must be a list of 'key=value' strings"
        )
    rows = []
    for name, entry in spec["rows"].items():
        entry = entry or {}
        method = entry.get("method", "deepmt_dr")
        overrides = entry.get("overrides") or []
        if not _is_override_list(overrides):
            raise ConfigError(
                f"{path}: row {name!r}: overrides must be a list of 'key=value' strings"
            )
        rows.append(
            Row(
                str(name),
                method,
                (*shared, *overrides),
                entry.get("summary") or get_method(method).summary,
            )
        )
    reference = spec.get("reference")
    if reference is not None and reference not in spec["rows"]:
        raise ConfigError(f"{path}: reference row {reference!r} is not one of the rows")
    return TableSpec(spec.get("title", path.parent.name), tuple(rows), reference)


def _is_override_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) and "=" in item for item in value)


def select_rows(spec: TableSpec, names: str | None) -> list[Row]:
    """The rows named in a comma list (all when None), in table order."""
    if not names:
        return list(spec.rows)
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = {row.name for row in spec.rows}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise ConfigError(
            f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(row.name for row in spec.rows)}"
        )
    return [row for row in spec.rows if row.name in wanted]


def parse_seeds(text: str) -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,5,7"`` -> those seeds."""
    try:
        if "," in text:
            seeds = [int(part) for part in text.split(",") if part.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError as error:
        raise ConfigError(
            f"--seeds must be a count or a comma list of integers, got {text!r}"
        ) from error
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise ConfigError(
            f"--seeds must give at least one distinct non-negative seed, got {text!r}"
        )
    return seeds


def run_name(row: str, seed: int) -> str:
    return f"{row}_seed{seed}"


def row_config(
    row: Row, seed: int, preset: str | Path, overrides: Sequence[str], out_dir: Path
) -> Config:
    """Preset <- row's method <- row's overrides <- the command line's <- seed and run folder."""
    runner = [
        f"run.seed={seed}",
        f"run.out_dir={out_dir / 'runs'}",
        f"run.name={run_name(row.name, seed)}",
    ]
    return load_config(preset, [*row.overrides, *overrides, *runner], method=row.method)


def differing_settings(
    saved_path: Path, config: Config, ignored: Sequence[str] = NOT_COMPARED
) -> list[str]:
    """``key: saved -> wanted`` for every setting in which a run's saved config.yaml differs from ``config``."""
    saved = flat_keys(yaml.safe_load(saved_path.read_text()) or {})
    wanted = flat_keys(config.to_dict())
    return [
        f"{key}: {saved.get(key)!r} -> {wanted.get(key)!r}"
        for key in sorted(set(saved) | set(wanted))
        if key not in ignored and saved.get(key) != wanted.get(key)
    ]


def check_same_settings(config: Config) -> None:
    """Stop if the run folder was trained with other settings than ``config``."""
    saved_path = config.run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    differing = differing_settings(saved_path, config)
    if differing:
        shown = "; ".join(differing[:4]) + (
            f" (+{len(differing) - 4} more)" if len(differing) > 4 else ""
        )
        raise ConfigError(
            f"{config.run_dir} was trained with other settings ({shown}): use another --out, or delete that folder to retrain it"
        )


# Keys that name a run's folder: a finished run of another table may be reused under another name.
RUN_LOCATION = ("run.name", "run.out_dir")


def find_reusable_run(config: Config, run_folders: Sequence[Path], split: str) -> Path | None:
    """A finished run folder among ``run_folders`` trained with exactly ``config``'s settings, or None.

    Why: the ablation's ``full`` row and the compared methods' ``deepmt_dr`` row are the same
    training; a second table can take the first one's tested runs instead of training them again.
    """
    for folder in run_folders:
        saved_path = folder / "config.yaml"
        if folder.resolve() == config.run_dir.resolve() or not saved_path.is_file():
            continue
        if not metrics_file(folder, split, config.test.input, config.test.input).is_file():
            continue
        if not differing_settings(saved_path, config, NOT_COMPARED + RUN_LOCATION):
            return folder
    return None


def copy_reused_run(source: Path, config: Config, figures_root: Path) -> None:
    """Copy a finished run folder (and its test figures) to ``config``'s run folder, renamed."""
    target = config.run_dir
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    saved_path = target / "config.yaml"
    text = saved_path.read_text()
    header = "".join(line for line in text.splitlines(keepends=True) if line.startswith("#"))
    saved = yaml.safe_load(text)
    saved["run"]["name"], saved["run"]["out_dir"] = config.run.name, config.run.out_dir
    saved_path.write_text(
        header + f"# reused from {source}\n" + yaml.safe_dump(saved, sort_keys=False)
    )
    source_figures = source.parent.parent / "figures" / source.name
    if source_figures.is_dir():
        shutil.copytree(source_figures, figures_root / config.run.name, dirs_exist_ok=True)


def _epoch_seconds(run_dir: Path) -> float | None:
    """Training time of a run from its log.csv (epochs incl. validation; survives resumes)."""
    path = run_dir / "log.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as file:
        seconds = [float(row["seconds"]) for row in csv.DictReader(file) if row.get("seconds")]
    return sum(seconds) if seconds else None


class _Datasets:
    """Rendered datasets shared by the runs of one invocation (the embedded one renders once)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str], object] = {}

    def get(self, config: Config, split: str):
        key = (yaml.safe_dump(asdict(config.data), sort_keys=True), split)
        if key not in self.cache:
            self.cache[key] = build_dataset(config, split)
        return self.cache[key]


def train_and_test(
    config: Config,
    datasets: _Datasets,
    figures_root: Path,
    progress: Callable | None = None,
    split: str = "test",
) -> dict:
    """Train ``config``'s run (resuming a checkpoint if there is one) and test it on ``split``; returns its metrics."""
    run_dir = config.run_dir
    last = run_dir / "checkpoints" / "last.pt"
    resume = (
        last.is_file() or (run_dir / "checkpoints" / "recovery.pt").is_file()
    )  # killed inside its first epoch
    if not resume and run_dir.exists():
        shutil.rmtree(run_dir)  # started but no checkpoint yet: start again cleanly
    trainer = Trainer(config, progress=progress)
    trainer.train_set = datasets.get(config, "train")
    trainer.val_set = datasets.get(config, "val")
    trainer.fit(resume=resume)
    best = run_dir / "checkpoints" / "best.pt"
    checkpoint = best if best.is_file() else last
    metrics, _ = run_test(
        checkpoint, split, config.run.device, 0, figures_root, dataset=datasets.get(config, split)
    )
    return metrics


def machine_note(jobs: int = 1) -> str:
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    threads = max(1, available_cpus() // jobs) if jobs > 1 else available_cpus()
    return f"{cpu}, {available_cpus()} cores, {gpu}; torch {torch.__version__}; {jobs} run(s) at once, {threads} CPU thread(s) each"


def _train_and_test_in_worker(config_values: dict, figures_root: str, split: str) -> float:
    """A pool worker's job: train and test one run; returns its wall seconds (metrics are on disk)."""
    started = time.perf_counter()
    train_and_test(
        config_from_dict(config_values), _WORKER_DATASETS, Path(figures_root), split=split
    )
    return time.perf_counter() - started


_WORKER_DATASETS = _Datasets()  # per worker process: each renders the embedded dataset once


def run_table(
    spec: TableSpec,
    rows: Sequence[Row],
    seeds: Sequence[int],
    out_dir: str | Path,
    preset: str | Path,
    overrides: Sequence[str] = (),
    progress: Callable | None = None,
    command: str = "",
    jobs: int = 1,
    split: str = "test",
    reuse_from: Sequence[str | Path] = (),
) -> Path:
    """Train and test every (row, seed) not yet finished, then write results.csv, table.md and table.png.

    ``reuse_from``: other tables' output folders; a (row, seed) whose exact settings one of their
    finished runs has is copied from there (run folder and figures) instead of being trained.

    ``jobs > 1`` trains that many runs at once in spawned processes, each with
    ``cpu_count // jobs`` torch threads (unless run.threads is set); only this process writes
    the results. ``split="val"`` tests on the validation split (a dataset copy without a test set).
    """
    out_dir = Path(out_dir)
    results_path = out_dir / "results.csv"
    results = read_results(results_path)
    done = {(result["row"], int(result["seed"])) for result in results}
    configs = [
        (row, seed, row_config(row, seed, preset, overrides, out_dir))
        for row in rows
        for seed in seeds
    ]
    for _, _, config in configs:  # fail before hours of training, not after
        check_same_settings(config)
    notes = [f"Command: `{command}`" if command else "", f"Machine: {machine_note(jobs)}"]

    def metrics_of(config: Config) -> Path:
        return metrics_file(config.run_dir, split, config.test.input, config.test.input)

    labels = {
        run_name(row.name, seed): f"[{index}/{len(configs)}] {row.name} seed {seed}"
        for index, (row, seed, _) in enumerate(configs, 1)
    }

    def record(row: Row, seed: int, config: Config, wall: float | None) -> None:
        metrics = json.loads(metrics_of(config).read_text())
        result = result_row(
            row.name,
            row.method,
            seed,
            metrics,
            config,
            _epoch_seconds(config.run_dir),
            wall,
            config.run_dir,
        )
        results.append(result)
        write_results(results, results_path)
        write_outputs(spec, read_results(results_path), out_dir, notes, split)
        log.info(
            "%s: QWK %s, accuracy %s%s",
            labels[config.run.name],
            _short(result.get("qwk")),
            _short(result.get("accuracy")),
            f" ({wall / 60:.1f} min)" if wall else "",
        )

    reusable = sorted(
        folder
        for root in reuse_from
        for folder in (Path(root) / "runs").glob("*")
        if folder.is_dir()
    )
    todo = []
    for row, seed, config in configs:
        label = labels[config.run.name]
        if (row.name, seed) in done:
            log.info("%s: in %s, skipped", label, results_path)
        elif metrics_of(config).is_file():
            log.info("%s: tested already, collected", label)
            record(row, seed, config, None)
        elif (source := find_reusable_run(config, reusable, split)) is not None:
            log.info("%s: same settings as %s, reused", label, source)
            copy_reused_run(source, config, out_dir / "figures")
            record(row, seed, config, None)
        else:
            todo.append((row, seed, config))
    if jobs <= 1:
        datasets = _Datasets()
        for row, seed, config in todo:
            log.info("%s: training %s", labels[config.run.name], config.run_dir)
            started = time.perf_counter()
            train_and_test(config, datasets, out_dir / "figures", progress, split)
            record(row, seed, config, time.perf_counter() - started)
    elif todo:
        threads = max(1, available_cpus() // jobs)
        context = multiprocessing.get_context("spawn")  # never fork a process that runs torch
        with ProcessPoolExecutor(jobs, mp_context=context) as pool:
            futures = {}
            for row, seed, config in todo:
                if not config.run.threads:
                    config.run.threads = threads
                log.info("%s: training %s", labels[config.run.name], config.run_dir)
                futures[
                    pool.submit(
                        _train_and_test_in_worker, config.to_dict(), str(out_dir / "figures"), split
                    )
                ] = (row, seed, config)
            for future in as_completed(futures):
                record(*futures[future], future.result())
    write_outputs(spec, read_results(results_path), out_dir, notes, split)
    return out_dir


def _short(value) -> str:
    return "n/a" if value is None else f"{float(value):.3f}"


def write_outputs(
    spec: TableSpec,
    results: Sequence[dict],
    out_dir: Path,
    notes: Sequence[str] = (),
    split: str = "test",
) -> None:
    """table.md and table.png from the results so far."""
    if not results:
        return
    descriptions = {row.name: row.summary for row in spec.rows}
    write_markdown(
        results,
        out_dir / "table.md",
        spec.title,
        descriptions,
        spec.reference,
        [note for note in notes if note],
        split,
    )
    plot_bars(results, out_dir / "table.png", spec.title, list(descriptions), split)


# ------------------------------------------------------------------------------------------- CLI
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
    overrides = list(QUICK) if args.quick else []
    for flag, key in (
        (args.dataset, "data.dataset"),
        (args.data_root, "data.root"),
        (args.device, "run.device"),
    ):
        if flag:
            overrides.append(f"{key}={flag}")
    overrides += args.overrides
    preset = args.config or (default_preset(args.dataset) if args.dataset else TABLE_PRESET)
    progress = None
    if not args.quiet:
        from tqdm import tqdm

        def progress(iterable, **kw):
            return tqdm(iterable, leave=False, dynamic_ncols=True, **kw)

    seeds = parse_seeds(args.seeds)
    command = shlex.join(["python", script, *argv])
    started = time.perf_counter()
    jobs = args.jobs if args.jobs is not None else default_jobs(args.device)
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {jobs}")
    out_dir = run_table(
        spec,
        rows,
        seeds,
        args.out,
        preset,
        overrides,
        None if jobs > 1 else progress,
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
