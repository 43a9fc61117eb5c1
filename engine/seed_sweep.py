"""Arms x seeds, each arm's run starting from one shared run per seed, resumable anywhere: the
task-aware loss sweep (``scripts/task_aware_sweep.yaml``, issue 25).

A sweep names a preset, overrides every run shares, the **base** run trained once per seed (e.g.
DeepMT-DR's isr + seg + cls stages) and the **arms** (e.g. the joint stage under several loss
balances). For seed ``s`` every arm starts from the base run of seed ``s`` (every same-named,
same-shaped tensor copied, as in ``engine/cv_study.py``), trains with ``run.seed=s``, and is
graded on the test split in fp32 with the mechanism signals (``engine/mechanism.py``). Arms of one
seed differ only by their overrides: paired by construction. The **record**::

    <records>/<arm>/seed<s>.csv    id, grade, predicted, p0..p4 (the test images)
    <records>/<arm>/seed<s>.json   metrics, mechanism signals, config hash, commit, CPU, wall time

Records are small and committed; the runner skips every (arm, seed) with a record, seed by seed
(every arm on seed 0 before any on seed 1), so a partial sweep is already a paired comparison.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.checkpoint import load_checkpoint, weights_digest
from engine.config import Config, ConfigError, load_config
from engine.cv_study import (
    ROOT,
    RunSpec,
    _run_spec,
    config_hash,
    is_recorded,
    machine_provenance,
    train_to_end,
    transferred_init,
    write_record,
)
from engine.testing import run_test

log = logging.getLogger(__name__)
UNIT = "seed"


@dataclass(frozen=True)
class Sweep:
    title: str
    preset: Path
    overrides: tuple[str, ...]
    base: RunSpec
    arms: dict[str, RunSpec]
    references: dict[str, str]  # arm -> the arm its paired difference is taken against
    seeds: tuple[int, ...]
    path: Path = field(default=Path("."))


def load_sweep(path: str | Path) -> Sweep:
    """The sweep of a YAML file; a ConfigError naming the file and the field when it is malformed."""
    path = Path(path)
    values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    for key in ("preset", "base", "arms", "seeds"):
        if key not in values:
            raise ConfigError(f"{path}: missing '{key}'")
    base = _run_spec("base", values["base"], {}, path)
    arms, references = {}, {}
    for name, spec in values["arms"].items():
        arms[name] = _run_spec(f"arms.{name}", {**spec, "start": None}, {}, path)
        reference = spec.get("against")
        if reference is not None:
            references[name] = reference
    for name, reference in references.items():
        if reference not in arms:
            raise ConfigError(f"{path}: arms.{name}.against {reference!r} is not an arm")
    seeds = values["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(seed, int) for seed in seeds):
        raise ConfigError(f"{path}: seeds must be a list of integers")
    return Sweep(
        values.get("title", path.stem),
        ROOT / values["preset"],
        tuple(str(o) for o in values.get("overrides") or []),
        base,
        arms,
        references,
        tuple(seeds),
        path,
    )


def sweep_config(
    sweep: Sweep, spec: RunSpec, name: str, seed: int, out_dir: Path, extra: tuple[str, ...] = ()
) -> Config:
    """The resolved config of one run (the base or an arm) of ``seed``."""
    overrides = [
        f"run.out_dir={out_dir / f'seed{seed}'}",
        f"run.name={name}",
        f"run.seed={seed}",
        *sweep.overrides,
        *spec.overrides,
        *extra,
    ]
    return load_config(sweep.preset, overrides, method=spec.method)


SUMMARY_KEYS = (
    ("qwk", ("grading", "qwk")),
    ("accuracy", ("grading", "accuracy")),
    ("referable_auc", ("grading", "referable_auc")),
    ("psnr", ("sr", "sr", "psnr")),
    ("psnr_bicubic", ("sr", "bicubic", "psnr")),
    ("psnr_lesion", ("sr", "sr", "psnr_lesion")),
)


def _get(metrics: dict, keys: tuple[str, ...]):
    for key in keys:
        if not isinstance(metrics, dict) or key not in metrics:
            return None
        metrics = metrics[key]
    return metrics


@dataclass
class SweepRunner:
    """Trains and grades each (arm, seed) of ``sweep`` that has no record yet (module doc)."""

    sweep: Sweep
    out_dir: Path
    records: Path
    extra: tuple[str, ...] = ()  # overrides after the sweep's (e.g. a quick smoke size)
    progress: object = None
    done: list[str] = field(default_factory=list)

    def pending(self, arms: list[str], seeds: list[int]) -> list[tuple[int, str]]:
        """(seed, arm) pairs without a record, seed by seed."""
        return [
            (seed, arm)
            for seed in seeds
            for arm in arms
            if not is_recorded(self.records, arm, seed, UNIT)
        ]

    def run_pending(self, arms: list[str], seeds: list[int]) -> Iterator[tuple[str, int, dict]]:
        """Run each pending (arm, seed), checking its record again just before it starts, so
        that runners started side by side on the same records (one per core) share the work
        instead of repeating it. Yields (arm, seed, the record's provenance)."""
        for seed, arm in self.pending(arms, seeds):
            if is_recorded(self.records, arm, seed, UNIT):  # another runner got there first
                continue
            yield arm, seed, self.run_one(arm, seed)

    def run_one(self, arm: str, seed: int) -> dict:
        """Train ``arm`` from seed ``seed``'s base run, grade the test split, write the record."""
        spec = self.sweep.arms[arm]
        started = time.time()
        base = sweep_config(self.sweep, self.sweep.base, "base", seed, self.out_dir, self.extra)
        source = train_to_end(base, self.progress)
        base_seconds, started = time.time() - started, time.time()
        config = sweep_config(self.sweep, spec, arm, seed, self.out_dir, self.extra)
        init = self.out_dir / f"seed{seed}" / f"init_{arm}.pt"
        if not init.is_file():
            transferred_init(source, config, init)
        config = sweep_config(
            self.sweep, spec, arm, seed, self.out_dir, (*self.extra, f"train.init_from={init}")
        )
        checkpoint = train_to_end(config, self.progress)
        metrics, run_dir = run_test(
            checkpoint, "test", config.run.device, 0, self.out_dir / "figures", amp=False
        )
        predictions = sorted(
            run_dir.glob("predictions_test*.csv"), key=lambda p: p.stat().st_mtime
        )[-1]
        provenance = {
            "sweep": str(self.sweep.path.relative_to(ROOT))
            if self.sweep.path.is_relative_to(ROOT)
            else str(self.sweep.path),
            "arm": arm,
            "seed": seed,
            "method": spec.method,
            "config_hash": config_hash(config),
            "overrides": [*self.sweep.overrides, *spec.overrides, *self.extra],
            "metrics": {name: _get(metrics, keys) for name, keys in SUMMARY_KEYS},
            "mechanism": metrics.get("mechanism"),
            **machine_provenance(),
            "wall_seconds": round(time.time() - started, 1),
            "base_wall_seconds": round(base_seconds, 1),  # when this call trained the base run
            # Arms are paired by seed only where they started from the same base weights.
            "base_weights_sha256": weights_digest(load_checkpoint(source)["model"]),
        }
        write_record(self.records, arm, seed, predictions, provenance, UNIT)
        self.done.append(f"{arm}/seed{seed}")
        return provenance
