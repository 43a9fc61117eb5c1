"""``train.init_from``: the checkpoint a run starts from; for ``synthetic``, a pre-training run on the
embedded dataset, with the config made here for the real run.

The pre-training trains the real run's network (every ``model.*`` key, ``data.scale``, the method)
on the embedded semi-synthetic dataset with ``configs/demo.yaml``'s schedule and losses (1600
images, a few epochs per stage), at the real run's ``data.hr_size`` or ``train.init_synthetic_hr_size``,
and runs where and as fast as the real run does (device, threads, speed switches). Its folder is
``<run.out_dir>/synthetic_<hash>``, the hash covering what changes its weights, so every real run
with the same pre-training shares one folder: built once, resumed if interrupted, then reused
(:func:`synthetic_init`, called by the trainer for ``train.init_from``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from data.lock import LockError
from engine.checkpoint import RESUME_MAY_CHANGE, CheckpointError, rng_state, set_rng_state
from engine.config import CONFIG_DIR, STAGES, Config, ConfigError, flat_keys, load_config, validate
from engine.release import resolve_checkpoint
from engine.run_folder import run_status

log = logging.getLogger("engine.trainer")  # the training log, whichever file writes its lines

SYNTHETIC = "synthetic"  # the train.init_from value
PRESET = CONFIG_DIR / "demo.yaml"  # the pre-training's schedule
RUN_PREFIX = "synthetic_"
SYNTHETIC_GRADES = 5  # the embedded dataset grades ICDR 0-4
LOCK_POLL_SECONDS = 30  # how often to look again at a pre-training another run holds
# Taken from the real run: where and how fast the pre-training runs, not what it learns.
RUNTIME_KEYS = (
    "run.device",
    "run.threads",
    "run.deterministic",
    "run.amp",
    "run.amp_dtype",
    "run.channels_last",
    "run.compile",
    "run.compile_backend",
    "run.compile_mode",
    "run.cudnn_benchmark",
    "run.optimizer_impl",
    "run.sync_batchnorm",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.prefetch_factor",
    "train.cache_frozen",
    "train.cache_max_gb",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.max_bad_steps",
)
# Keys left out of the folder's hash: those a resume may change, except what and how long it trains.
HASH_IGNORES = RESUME_MAY_CHANGE - {"train.stage", *(f"train.{stage}.epochs" for stage in STAGES)}


def _get(config: Config, key: str):
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _set(config: Config, key: str, value) -> None:
    section, name = key.split(".")
    setattr(getattr(config, section), name, value)


def pretraining_config(config: Config) -> Config:
    """The pre-training run's config for the real run ``config`` (its ``run.name`` is ``synthetic_<hash>``)."""
    if config.data.num_classes != SYNTHETIC_GRADES:
        raise ConfigError(
            f"train.init_from={SYNTHETIC}: the embedded dataset has {SYNTHETIC_GRADES} grades, this run "
            f"data.num_classes={config.data.num_classes}, so the grading heads would differ; pass a checkpoint path instead"
        )
    pre = load_config(PRESET, method=config.method)
    for key, value in asdict(config.model).items():
        _set(pre, f"model.{key}", value)
    for key in RUNTIME_KEYS:
        _set(pre, key, _get(config, key))
    pre.data.scale = config.data.scale
    pre.data.hr_size = config.train.init_synthetic_hr_size or config.data.hr_size
    pre.data.crop_size = min(pre.data.crop_size, pre.data.hr_size)
    pre.run.out_dir = config.run.out_dir
    pre.run.name = RUN_PREFIX + pretraining_hash(pre)
    validate(pre)
    return pre


def pretraining_hash(pre: Config) -> str:
    """8 hex digits of the SHA-256 of the keys that differ from the defaults, less :data:`HASH_IGNORES`
    (so a new config key whose default keeps today's behaviour leaves existing folders valid)."""
    defaults = flat_keys(Config().to_dict())
    changed = {
        key: value
        for key, value in flat_keys(pre.to_dict()).items()
        if key not in HASH_IGNORES and defaults[key] != value
    }
    return hashlib.sha256(json.dumps(changed, sort_keys=True, default=str).encode()).hexdigest()[:8]


def init_checkpoint(config: Config, train: Callable[[Config], object]) -> Path:
    """The checkpoint train.init_from names: a checkpoint or release file, a run folder, a release
    name (``deepmt_dr_idrid_small``: a larger model can start from a released one), or the
    synthetic pre-training's best.pt
    (``train(pre)`` trains or resumes that run, :func:`synthetic_init`)."""
    value = config.train.init_from
    if value == SYNTHETIC:
        return synthetic_init(config, train)
    try:  # a checkpoint file, a run folder (its best.pt) or a release name, hash-checked
        return resolve_checkpoint(value)
    except CheckpointError as error:
        raise CheckpointError(
            f"train.init_from={value}: {error}; pass a checkpoint, a run folder, a release name "
            f"or {SYNTHETIC} (pre-train this model on the embedded dataset first)"
        ) from None


def synthetic_init(config: Config, train: Callable[[Config], object]) -> Path:
    """train.init_from=synthetic: the best.pt of ``config``'s pre-training run, reused when
    finished, else trained or resumed here by ``train(pre)`` (after waiting while another run
    trains it). The global RNG state is restored after it, so the real run trains the same
    whether its pre-training ran now or before."""
    pre = pretraining_config(config)
    rng = rng_state()
    while True:
        status = run_status(pre)
        if status == "finished":
            log.info(
                "train.init_from=%s: reusing the finished pre-training run %s",
                SYNTHETIC,
                pre.run_dir,
            )
            break
        log.info(
            "train.init_from=%s: %s pre-training run %s",
            SYNTHETIC,
            "resuming the interrupted" if status == "interrupted" else "starting the",
            pre.run_dir,
        )
        try:
            train(pre)
            break
        except LockError as busy:
            log.info("%s; looking again in %d s", busy, LOCK_POLL_SECONDS)
            time.sleep(LOCK_POLL_SECONDS)
    set_rng_state(rng)
    best = pre.run_dir / "checkpoints" / "best.pt"
    if not best.is_file():
        raise CheckpointError(
            f"train.init_from={SYNTHETIC}: the pre-training run {pre.run_dir} wrote no best.pt"
        )
    return best
