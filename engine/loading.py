"""A trained model rebuilt from a checkpoint (a run's ``.pt`` or a release): the config saved
inside it decides the architecture. Reading and verifying the file is ``engine/checkpoint.py``'s."""

from __future__ import annotations

from pathlib import Path

from engine.builders import build_model, select_device
from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import Config, config_from_dict
from engine.config_schema import RunConfig
from models import DeepMTDR


def checkpoint_config(checkpoint: str | Path, state: dict | None = None) -> Config:
    """The config a checkpoint was trained with, checked (``state``: the checkpoint, already read)."""
    state = load_checkpoint(checkpoint) if state is None else state
    return config_from_dict(state["config"])


def load_trained(checkpoint: str | Path, device: str = "auto") -> tuple[DeepMTDR, Config, dict]:
    """Model and config rebuilt from a checkpoint (the config inside it decides the architecture).

    A release's config is the training machine's: its ``run.out_dir`` and ``run.threads`` give
    way to this machine's defaults, and ``run.name`` becomes the release's name, so that test.py
    writes ``runs/<release>`` here and not into the folder it was trained in."""
    state = load_checkpoint(checkpoint)
    config = checkpoint_config(checkpoint, state)
    config.model.imagenet_weights = None  # the checkpoint already holds the trained weights
    if state.get("release"):
        config.run.out_dir, config.run.threads = RunConfig.out_dir, RunConfig.threads
        config.run.name = state["release"].get("name", config.run.name)
    model = build_model(config)
    load_model_state(model, state["model"], checkpoint)
    return model.to(select_device(device)).eval(), config, state
