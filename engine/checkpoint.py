"""Checkpoints: written atomically (temp file + rename), read with ``weights_only=True``.

A checkpoint holds ``format_version``, the resolved config, the model state, optimizer /
scheduler / scaler states by name, stage, epoch, step, RNG states and the best metric. Loading
into a model that does not match fails with :class:`CheckpointError` naming the mismatch.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

FORMAT_VERSION = 1
REQUIRED_KEYS = ("format_version", "config", "model")


class CheckpointError(RuntimeError):
    """A missing, corrupt, foreign or incompatible checkpoint; the message names the file."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: a crash mid-write never leaves a truncated file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format_version": FORMAT_VERSION, **state}
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


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


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a DeepMT-DR checkpoint on the CPU without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint: {type(error).__name__}: {error}") from error
    if not isinstance(state, dict) or any(key not in state for key in REQUIRED_KEYS):
        raise CheckpointError(f"{path} is not a DeepMT-DR checkpoint (expected keys {', '.join(REQUIRED_KEYS)})")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {state['format_version']}, this code reads {FORMAT_VERSION}"
        )
    return state


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Strictly load ``state`` into ``model``, reporting missing, unexpected and mis-shaped tensors."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = [
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in sorted(set(own) & set(state))
        if state[key].shape != own[key].shape
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
        if items:
            shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not match the requested model; " + "; ".join(problems))
    model.load_state_dict(state)


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
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
