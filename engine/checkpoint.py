"""Checkpoints: SHA-256-verified, written atomically (temp file + rename), read with ``weights_only=True``.

File format, version 2: one ASCII header line, then the bytes ``torch.save(state)`` wrote::

    DEEPMTDR-CHECKPOINT 2 sha256=<64 lowercase hex digits of the payload> bytes=<payload length, 15 digits>\\n<payload>

The digest covers every tensor and all metadata, so a changed, missing or added payload byte fails
the check, and a changed header byte breaks the header's strict syntax, its version, its length
or its digest: every single-byte flip anywhere in the file is caught (``tests/test_reliability.py``,
``bench/flip_bytes.py``). Version 1 files (a bare torch zip, written before checksums) still load,
with a warning that nothing verified them; a version 2 file never starts like one (``PK``).

A checkpoint holds ``format_version``, the resolved config, the model state, optimizer /
scheduler / scaler states by name, stage, epoch, step, RNG states and the best metric; a recovery
checkpoint (inside an epoch) adds ``position``. With ``train.ema_decay`` on, ``model`` holds the
averaged weights (what validation scored and what best.pt, export and test.py use) and the
checkpoints a resume continues (last, recovery) add ``raw_model``, the weights the optimisers step. Loading into a model that does not match fails
with :class:`CheckpointError` naming the mismatch.

A release may instead be a safetensors pair (``python -m engine.export ... --out NAME.safetensors``),
so that any tool opens it without this repository: ``NAME.safetensors`` holds the weights,
``NAME.json`` (the sidecar) the config, the release facts and the weights file's SHA-256.
:func:`load_checkpoint` reads it (given either file) into the same dict a ``.pt`` release gives;
writing it is ``engine/export.py``'s.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from data.atomic import atomic_path
from engine.config import STAGES

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
UNVERIFIED_VERSION = 1  # a bare torch zip, from before checksums
REQUIRED_KEYS = ("format_version", "config", "model")
MAGIC = b"DEEPMTDR-CHECKPOINT "
ZIP_SIGNATURE = b"PK\x03\x04"
HEADER = re.compile(rb"DEEPMTDR-CHECKPOINT (\d{1,4}) sha256=([0-9a-f]{64}) bytes=(\d{15})\n")
HEADER_MAX = 128  # the header line is 116 bytes
SAFETENSORS_SUFFIX = ".safetensors"
SIDECAR_SUFFIX = ".json"
SIDECAR_FORMAT = "deepmt-dr-safetensors-1"
# What a .pt release keeps beside config, model and release; the sidecar keeps them under "state".
RELEASE_STATE_KEYS = ("stage", "epoch", "step", "best_metric", "best_epoch")

# Config keys a resumed run may change: where things are, how fast and on what it runs, how often it
# saves, and what to train for how long. Any other difference changes the run and is refused
# (engine/run_folder.py, through engine.config.config_differences). Wider than the table runner's
# NOT_COMPARED (engine/table_reuse.py): a resume continues the same training, which may be given
# more epochs or another machine, whereas a table cell must be exactly its row's finished training.
RESUME_MAY_CHANGE = frozenset(
    {
        "run.name",
        "run.out_dir",
        "run.device",
        "run.threads",
        "run.keep",
        "data.root",
        "data.cache_dir",
        "data.num_workers",
        "data.pin_memory",
        "data.persistent_workers",
        "data.prefetch_factor",
        "data.prepare_workers",
        "train.stage",
        "train.init_from",
        "train.init_synthetic_hr_size",
        "train.checkpoint_every_steps",
        "train.checkpoint_every_minutes",
        "train.max_bad_steps",
        *(f"train.{stage}.epochs" for stage in STAGES),
        # How often a stage validates: which epoch is "best" may differ, not what is learned.
        "train.eval_every",
        *(f"train.{stage}.eval_every" for stage in STAGES),
        # Speed switches: the same training within float tolerance ("auto" resolves per machine,
        # so a job requeued on another node may change them).
        "run.amp",
        "run.channels_last",
        "run.compile",
        "run.compile_backend",
        "run.compile_mode",
        "run.optimizer_impl",
        "run.cudnn_benchmark",
        "train.cache_frozen",
        "train.cache_max_gb",
    }
)


class CheckpointError(RuntimeError):
    """A missing, corrupt, foreign or incompatible checkpoint, or one that could not be written; the message names the file."""


def _header(digest: str, size: int) -> bytes:
    """The header line; fixed width, so it is written first as a placeholder and then filled in."""
    return f"DEEPMTDR-CHECKPOINT {FORMAT_VERSION} sha256={digest} bytes={size:015d}\n".encode(
        "ascii"
    )


class _HashingWriter:
    """The file object ``torch.save`` writes to: each chunk goes to disk and into the SHA-256, so the
    payload is never held in memory a second time."""

    def __init__(self, file) -> None:
        self.file, self.digest, self.size = file, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.digest.update(data)
        self.size += len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (:func:`data.atomic.atomic_path`, the rename made
    durable): a crash, a kill or a full disk mid-write leaves the previous file at ``path`` as it
    was (a full disk raises :class:`CheckpointError` saying so)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, sync_folder=True) as temp, temp.open("r+b") as file:
            file.write(_header("0" * 64, 0))
            payload = _HashingWriter(file)
            torch.save({**state, "format_version": FORMAT_VERSION}, payload)
            file.seek(0)
            file.write(_header(payload.digest.hexdigest(), payload.size))
    except OSError as error:
        previous = (
            "the previous checkpoint there is intact"
            if path.is_file()
            else "there was no checkpoint there before"
        )
        raise CheckpointError(
            f"could not write checkpoint {path}: {error.strerror or error}; {previous}"
        ) from error
    return path


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete half-written files (``.NAME.*.tmp``) that killed writers left in ``folder``; only the
    folder's one writer (it holds the run lock) may call this."""
    removed = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for stale in removed:
        stale.unlink(missing_ok=True)
    return removed


def link_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Make ``target`` the same checkpoint as ``source`` (a hard link, else a copy), atomically.

    ``last.pt``/``best.pt`` repeat a stage's checkpoint; linking avoids serialising it again.
    """
    source, target = Path(source), Path(target)
    temp = target.with_name(f".{target.name}.link.tmp")
    temp.unlink(missing_ok=True)
    try:
        os.link(source, temp)
    except OSError:  # file systems without hard links
        shutil.copyfile(source, temp)
    os.replace(temp, target)
    return target


def without_optimizers(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` minus the optimiser moments (two thirds of an Adam checkpoint) and the raw weights
    under an EMA: for checkpoints no resume continues (best weights, a finished stage, epoch snapshots)."""
    return {key: value for key, value in state.items() if key not in ("optimizers", "raw_model")}


class _Payload(io.RawIOBase):
    """The bytes of an open file after its header, as a file of their own: ``torch.load`` reads the
    payload in place, without a copy in memory."""

    def __init__(self, file, start: int) -> None:
        super().__init__()
        self.file, self.start = file, start
        file.seek(start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return (
            self.file.seek(self.start + offset if whence == os.SEEK_SET else offset, whence)
            - self.start
        )

    def tell(self) -> int:
        return self.file.tell() - self.start

    def readinto(self, buffer) -> int:
        return self.file.readinto(buffer)


def _check_payload(file, path: Path, verify: bool) -> int:
    """Check a version-2 file's header, length and (``verify``) digest; returns where the payload starts."""
    match = HEADER.match(file.read(HEADER_MAX))
    if match is None:
        raise CheckpointError(f"{path} is corrupt: its checksum header is damaged")
    version, digest, size = int(match[1]), match[2].decode("ascii"), int(match[3])
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {version}; this code reads {FORMAT_VERSION} (and {UNVERIFIED_VERSION}, unverified)"
        )
    actual = os.fstat(file.fileno()).st_size - match.end()
    if actual != size:
        raise CheckpointError(
            f"{path} is corrupt: {actual} bytes after its header, the header says {size} (truncated or appended to)"
        )
    if verify:
        file.seek(match.end())
        if hashlib.file_digest(file, "sha256").hexdigest() != digest:
            raise CheckpointError(
                f"{path} is corrupt: its SHA-256 does not match the one written with it"
            )
    return match.end()


def sidecar_of(weights: str | Path) -> Path:
    """The sidecar ``NAME.json`` of a safetensors release ``NAME.safetensors``."""
    return Path(weights).with_suffix(SIDECAR_SUFFIX)


def is_safetensors_release(path: str | Path) -> bool:
    """Whether ``path`` names either file of a safetensors release (by its suffix)."""
    return Path(path).suffix in (SAFETENSORS_SUFFIX, SIDECAR_SUFFIX)


def read_sidecar(sidecar: Path) -> dict[str, Any]:
    """A release sidecar's JSON, checked for the keys the loader needs."""
    if not sidecar.is_file():
        raise CheckpointError(
            f"release sidecar not found: {sidecar} (a NAME.safetensors release is read with its NAME.json)"
        )
    try:
        facts = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{sidecar} is not a readable release sidecar: {error}") from error
    if (
        not isinstance(facts, dict)
        or facts.get("format") != SIDECAR_FORMAT
        or not isinstance(facts.get("config"), dict)
        or not isinstance(facts.get("weights"), dict)
        or not isinstance(facts["weights"].get("sha256"), str)
    ):
        raise CheckpointError(
            f"{sidecar} is not a DeepMT-DR release sidecar (expected format {SIDECAR_FORMAT!r} with config and weights.sha256)"
        )
    return facts


def _load_safetensors_release(path: Path, verify: bool) -> dict[str, Any]:
    """The state dict of a safetensors release, given its weights file or its sidecar.

    The sidecar pins the weights' SHA-256 (safetensors has no checksum of its own), so a weights
    file changed, truncated or swapped for another release's is refused unless ``verify=False``."""
    weights = path.with_suffix(SAFETENSORS_SUFFIX)
    sidecar = sidecar_of(weights)
    if path == weights and not weights.is_file():
        raise CheckpointError(f"checkpoint not found: {weights}")
    facts = read_sidecar(sidecar)
    if facts["weights"].get("file", weights.name) != weights.name:
        raise CheckpointError(
            f"{sidecar} describes {facts['weights']['file']}, not {weights.name}: a sidecar belongs next to its own weights file"
        )
    if not weights.is_file():
        raise CheckpointError(
            f"checkpoint not found: {weights} (the weights {sidecar.name} describes)"
        )
    try:
        if verify:
            with weights.open("rb") as file:
                actual = hashlib.file_digest(file, "sha256").hexdigest()
            if actual != facts["weights"]["sha256"]:
                raise CheckpointError(
                    f"{weights} is corrupt or not the weights {sidecar.name} describes: SHA-256 {actual}, the sidecar says {facts['weights']['sha256']}"
                )
        try:
            from safetensors.torch import load_file
        except ImportError as error:
            raise CheckpointError(
                f"{weights} is a safetensors release: install safetensors (pip install -r requirements.txt) to read it"
            ) from error
        try:
            tensors = load_file(str(weights), device="cpu")
        except Exception as error:  # safetensors raises its own SafetensorError (and OSError, ValueError) for bad files
            raise CheckpointError(
                f"{weights} is not a readable safetensors file: {type(error).__name__}: {error}"
            ) from error
    except OSError as error:
        raise CheckpointError(f"{weights} could not be read: {error.strerror or error}") from error
    state = {
        key: value for key, value in (facts.get("state") or {}).items() if key in RELEASE_STATE_KEYS
    }
    return {
        "config": facts["config"],
        "model": tensors,
        "release": facts.get("release"),
        **state,
        "format_version": FORMAT_VERSION,
    }


def load_checkpoint(path: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read a DeepMT-DR checkpoint on the CPU without executing pickled code.

    The SHA-256 is checked unless ``verify=False`` (asked for speed alone; the length and the
    header are checked either way). A version-1 file has no checksum and loads with a warning.
    A safetensors release (``NAME.safetensors`` or its sidecar ``NAME.json``) gives the same dict
    as a ``.pt`` release: config, model, release and the training position.
    """
    path = Path(path)
    if is_safetensors_release(path):
        return _load_safetensors_release(path, verify)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with path.open("rb") as file:
            start = file.read(len(MAGIC))
            file.seek(0)
            if start == MAGIC:
                version, payload = (
                    FORMAT_VERSION,
                    _Payload(file, _check_payload(file, path, verify)),
                )
            elif start.startswith(ZIP_SIGNATURE):
                version, payload = UNVERIFIED_VERSION, file
            else:
                raise CheckpointError(
                    f"{path} is not a readable checkpoint: it starts with neither a DeepMT-DR checkpoint header nor a torch zip signature"
                )
            try:
                state = torch.load(payload, map_location="cpu", weights_only=True)
            except Exception as error:  # torch raises several types for corrupt or foreign files
                raise CheckpointError(
                    f"{path} is not a readable checkpoint: {type(error).__name__}: {error}"
                ) from error
    except OSError as error:
        raise CheckpointError(f"{path} could not be read: {error.strerror or error}") from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is not a DeepMT-DR checkpoint (expected keys {', '.join(REQUIRED_KEYS)})"
        )
    if state["format_version"] != version:
        raise CheckpointError(
            f"{path} has format_version {state['format_version']} in a {'checksummed' if version == FORMAT_VERSION else 'bare torch zip'} "
            f"file; this code reads {FORMAT_VERSION} (with its checksum header) and {UNVERIFIED_VERSION} (bare torch zip, unverified)"
        )
    if version == UNVERIFIED_VERSION:
        log.warning(
            "%s is a format_version 1 checkpoint, written before checksums: loaded unverified", path
        )
    return state


# Tensors added to the model after checkpoints were first written: one without them loads, and the
# model keeps its defaults (grade_thresholds: 0.5, 1.5, ..., which only model.grade_decoding=thresholds reads).
OPTIONAL_TENSORS = frozenset({"grade_thresholds"})


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strictly load ``state`` into ``model``, reporting missing, unexpected and mis-shaped tensors
    (an older checkpoint may lack those of OPTIONAL_TENSORS)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state) - OPTIONAL_TENSORS)
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    problems = []
    for label, items in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("shape mismatch", mis_shaped),
    ):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(
            f"{source} does not match the requested model; " + "; ".join(problems)
        )
    model.load_state_dict(
        state, strict=False
    )  # checked above; strict=False lets OPTIONAL_TENSORS be absent


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a model state's tensors (names, dtypes, shapes, values; sorted by name), which
    says whether two runs started from the same weights whatever file or machine holds them."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def rng_state() -> dict[str, Any]:
    """RNG states of python, numpy and torch (CPU and CUDA), as tensors and plain types."""
    state = {
        "python": list(random.getstate()[1]),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved."""
    random.setstate((3, tuple(int(v) for v in state["python"]), None))
    np.random.set_state(
        ("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]))
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
