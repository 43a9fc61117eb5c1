"""Photographs and tiny checkpoints for the predict.py, export and quality tests."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from conftest import TINY

from engine.builders import build_model
from engine.checkpoint import save_checkpoint
from engine.config import load_config


def textured_fundus(
    height: int = 150,
    width: int = 200,
    seed: int = 0,
    background: int = 0,
    centre: tuple[float, float] | None = None,
    radius: float | None = None,
) -> np.ndarray:
    """An HxWx3 uint8 fundus stand-in: an orange disc with vessel-like dark lines and fine texture
    (sharp enough for the quality checks) on a uniform background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    cy, cx = centre if centre is not None else (height / 2, width / 2)
    radius = radius if radius is not None else 0.45 * min(height, width)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    shade = 0.75 + 0.25 * np.cos((yy - cy) / radius * 1.3) * np.cos((xx - cx) / radius * 1.3)
    image = np.stack([200 * shade, 95 * shade, 40 * shade], axis=-1)
    vessels = np.abs(np.sin((xx - cx) / radius * 9 + np.sin((yy - cy) / radius * 4) * 2)) < 0.08
    image[vessels] *= 0.55
    image += rng.normal(0, 6, size=image.shape)
    out = np.full((height, width, 3), background, dtype=np.uint8)
    out[inside] = np.clip(image[inside], 0, 255).astype(np.uint8)
    return out


def bomb_png(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A PNG whose header promises ``width x height`` pixels over a few bytes of data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
    return path


def tiny_checkpoint(path: Path, overrides: list[str] = (), seed: int = 0) -> Path:
    """A freshly built TINY DeepMT-DR (HR 64 / LR 16) saved as a checkpoint, BatchNorm statistics
    moved off their defaults so that float16 rounding shows in every layer."""
    torch.manual_seed(seed)
    config = load_config(
        "configs/demo.yaml", [*TINY, f"run.out_dir={path.parent / 'runs'}", *overrides]
    )
    model = build_model(config)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        if hasattr(model.isr, "tail"):
            model.isr.tail.weight.normal_(0, 0.01)
    return save_checkpoint(
        {
            "config": config.to_dict(),
            "model": model.state_dict(),
            "stage": "joint",
            "epoch": 1,
            "best_epoch": 1,
            "optimizers": {"isr": {"state": {}, "param_groups": []}},
        },
        path,
    )
