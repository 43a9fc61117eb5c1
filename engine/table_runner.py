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

Here: training, testing and recording the runs. What a table is: engine/table_spec.py; which run
folder a cell may use: engine/table_reuse.py; the ``run.py`` command line: engine/table_cli.py.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from engine.builders import build_dataset
from engine.config import (
    Config,
    ConfigError,  # noqa: F401 (re-exported: the runner's errors)
    config_from_dict,
)
from engine.logging import log_facts
from engine.output_names import metrics_file
from engine.runtime import available_cpus, cpu_model
from engine.table_reuse import (
    check_same_settings,
    copy_reused_run,
    find_reusable_run,
    reusable_folders,
)
from engine.table_spec import (
    TABLE_PRESET,  # noqa: F401 (re-exported, as are load_table, parse_seeds, select_rows)
    Row,
    TableSpec,
    load_table,  # noqa: F401
    parse_seeds,  # noqa: F401
    row_config,
    run_name,
    select_rows,  # noqa: F401
)
from engine.tables import plot_bars, read_results, result_row, write_markdown, write_results
from engine.testing import run_test
from engine.trainer import Trainer

log = logging.getLogger(__name__)

Planned = tuple[Row, int, Config]  # a (row, seed) and its run's config


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
    train_val = (datasets.get(config, "train"), datasets.get(config, "val"))
    Trainer(config, progress=progress, datasets=train_val).fit(resume=resume)
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


@dataclass
class _Table:
    """One run_table call's table: the results so far, and what records a finished run in them."""

    spec: TableSpec
    out_dir: Path
    split: str
    notes: list[str]
    labels: dict[str, str]  # run name -> "[i/n] row seed k", for the log
    results: list[dict] = field(default_factory=list)

    @property
    def results_path(self) -> Path:
        return self.out_dir / "results.csv"

    @property
    def figures(self) -> Path:
        return self.out_dir / "figures"

    def metrics_path(self, config: Config) -> Path:
        return metrics_file(config.run_dir, self.split, config.test.input, config.test.input)

    def write(self) -> None:
        """table.md and table.png from results.csv."""
        write_outputs(
            self.spec, read_results(self.results_path), self.out_dir, self.notes, self.split
        )

    def record(self, row: Row, seed: int, config: Config, wall: float | None) -> None:
        """A tested run into results.csv, and the table rewritten."""
        metrics = json.loads(self.metrics_path(config).read_text())
        seconds, train_ce = log_facts(config.run_dir)
        result = result_row(
            row.name, row.method, seed, metrics, config, seconds, wall, config.run_dir, train_ce
        )
        self.results.append(result)
        write_results(self.results, self.results_path)
        self.write()
        log.info(
            "%s: QWK %s, accuracy %s%s",
            self.labels[config.run.name],
            _short(result.get("qwk")),
            _short(result.get("accuracy")),
            f" ({wall / 60:.1f} min)" if wall else "",
        )


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
    planned = [
        (row, seed, row_config(row, seed, preset, overrides, out_dir))
        for row in rows
        for seed in seeds
    ]
    for _, _, config in planned:  # fail before hours of training, not after
        check_same_settings(config)
    notes = [f"Command: `{command}`" if command else "", f"Machine: {machine_note(jobs)}"]
    labels = {
        run_name(row.name, seed): f"[{index}/{len(planned)}] {row.name} seed {seed}"
        for index, (row, seed, _) in enumerate(planned, 1)
    }
    table = _Table(spec, out_dir, split, notes, labels, read_results(out_dir / "results.csv"))
    todo = _collect_finished(table, planned, reusable_folders(reuse_from))
    if jobs <= 1:
        _train_here(table, todo, progress)
    elif todo:
        _train_in_pool(table, todo, jobs)
    table.write()
    return out_dir


def _collect_finished(table: _Table, planned: Sequence[Planned], reusable: list[Path]) -> list:
    """Record what needs no training (tested already, or reused from another table); returns the
    rest. A (row, seed) already in results.csv is skipped."""
    done = {(result["row"], int(result["seed"])) for result in table.results}
    todo = []
    for row, seed, config in planned:
        label = table.labels[config.run.name]
        if (row.name, seed) in done:
            log.info("%s: in %s, skipped", label, table.results_path)
        elif table.metrics_path(config).is_file():
            log.info("%s: tested already, collected", label)
            table.record(row, seed, config, None)
        elif (source := find_reusable_run(config, reusable, table.split)) is not None:
            log.info("%s: same settings as %s, reused", label, source)
            copy_reused_run(source, config, table.figures)
            table.record(row, seed, config, None)
        else:
            todo.append((row, seed, config))
    return todo


def _train_here(table: _Table, todo: Sequence[Planned], progress: Callable | None) -> None:
    """Train and test the runs one after another in this process, sharing their datasets."""
    datasets = _Datasets()
    for row, seed, config in todo:
        log.info("%s: training %s", table.labels[config.run.name], config.run_dir)
        started = time.perf_counter()
        train_and_test(config, datasets, table.figures, progress, table.split)
        table.record(row, seed, config, time.perf_counter() - started)


def _train_in_pool(table: _Table, todo: Sequence[Planned], jobs: int) -> None:
    """Train and test ``jobs`` runs at once in spawned processes, each with cores // jobs torch
    threads unless run.threads is set; this process records each as it finishes."""
    threads = max(1, available_cpus() // jobs)
    context = multiprocessing.get_context("spawn")  # never fork a process that runs torch
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = {}
        for row, seed, config in todo:
            if not config.run.threads:
                config.run.threads = threads
            log.info("%s: training %s", table.labels[config.run.name], config.run_dir)
            job = (config.to_dict(), str(table.figures), table.split)
            futures[pool.submit(_train_and_test_in_worker, *job)] = (row, seed, config)
        for future in as_completed(futures):
            table.record(*futures[future], future.result())


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


_MOVED_TO_CLI = ("table_main", "get_args_parser", "default_jobs", "QUICK", "DEFAULT_SEEDS")


def __getattr__(name: str):
    """The command line is engine/table_cli.py (which imports this module); its names still resolve
    here, looked up when first asked for."""
    if name in _MOVED_TO_CLI:
        from engine import table_cli

        return getattr(table_cli, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
