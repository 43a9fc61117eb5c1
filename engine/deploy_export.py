"""Deployment export (``python -m engine.export SOURCE --out NAME.onnx`` or ``NAME.pt2``, or
``--format onnx`` / ``pt2``): the inference network of a checkpoint or release as one file that
runs without this repository's network classes.

    python -m engine.export pretrained_model/deepmt_dr_idrid_small.safetensors --out deploy/deepmt_dr_idrid_small.onnx
    python -m engine.export runs/idrid_small --out deploy/idrid_small.pt2
    python predict.py photos/ --checkpoint deploy/deepmt_dr_idrid_small.onnx

The network (:class:`InferencePath`): LR ``[N,3,h,w]`` float32 in [0,1] -> SR ``[N,3,H,W]``,
lesion probabilities ``[N,L,H,W]`` (sigmoid) and grade logits ``[N,C]``; dynamic batch, the
model's LR size, float32 weights. ``.onnx``: ``torch.export`` then ``torch.onnx.export``
(dynamo; needs ``onnx`` and ``onnxscript``), the SPP's ``adaptive_max_pool2d`` (no ONNX
operator) written as fixed max windows first (exact: :func:`adaptive_max_pool2d_fixed`).
``.pt2``: the ``torch.export`` program (``torch.export.save``), for PyTorch runtimes.

The metadata predict.py needs (engine/onnx_inferer.py, :func:`deploy_metadata`) is stored in the
file: the ONNX model's ``metadata_props`` entry ``deepmt_dr``, the pt2 archive's extra file
``deepmt_dr.json``. The file is written atomically; after writing, its outputs are compared with
PyTorch's on a random batch and the largest differences printed. Deployment files are not entered
in ``RELEASES.json`` (its entries are releases, named by file stem: ``NAME.onnx`` would replace
``NAME.pt``'s); the file records the SHA-256 of the checkpoint it came from, and predict.py
records the file's own SHA-256 in ``predict_run.json``. Temperature and referral threshold come
from the source's release metadata: export the release first to carry its calibration.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from data.cache import file_sha256
from engine.builders import build_model
from engine.checkpoint import CheckpointError, load_checkpoint, load_model_state
from engine.config import Config, config_from_dict
from engine.export import FORMATS, release_file, source_checkpoint
from engine.inference_core import release_calibration
from engine.onnx_inferer import (
    DEPLOY_FORMAT,
    DEPLOY_SUFFIXES,
    METADATA_KEY,
    OUTPUTS,
    DeploymentError,
    load_deployed,
)
from engine.release_facts import git_commit
from models import DeepMTDR

FORMAT_SUFFIX = {kind: suffix for suffix, kind in DEPLOY_SUFFIXES.items()}  # onnx -> .onnx
EXAMPLE_BATCH = (
    2  # the batch traced (dynamic: any batch runs); 1 would be specialised by torch.export
)


class InferencePath(nn.Module):
    """LR -> (SR, lesion probabilities, grade logits): what engine.inference.Inferer runs per view."""

    def __init__(self, model: DeepMTDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        sr = self.model.isr(lr)
        lesion_logits = self.model.segment(sr)
        logits = self.model.grade_with_lesions(sr, lesion_logits).grade_logits
        return sr, torch.sigmoid(lesion_logits), logits


def adaptive_max_pool2d_fixed(
    x: torch.Tensor, output_size: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``aten.adaptive_max_pool2d`` (values and flat indices, as PyTorch computes them) for the fixed
    spatial size the export traces: the max over each of PyTorch's windows ``[floor(i*H/o),
    ceil((i+1)*H/o))``; one max pool when the size divides."""
    height, width = x.shape[-2:]
    rows, columns = output_size
    values, indices = [], []
    for i in range(rows):
        top, bottom = (i * height) // rows, -(-((i + 1) * height) // rows)
        row_values, row_indices = [], []
        for j in range(columns):
            left, right = (j * width) // columns, -(-((j + 1) * width) // columns)
            value, where = x[..., top:bottom, left:right].flatten(-2).max(-1)
            span = right - left
            row_values.append(value)
            row_indices.append((top + where // span) * width + left + where % span)
        values.append(torch.stack(row_values, -1))
        indices.append(torch.stack(row_indices, -1))
    pooled = torch.stack(values, -2)
    if height % rows == 0 and width % columns == 0:  # one MaxPool node in ONNX instead of slices
        kernel = (height // rows, width // columns)
        pooled = nn.functional.max_pool2d(x, kernel, kernel)
    return pooled, torch.stack(indices, -2)


def deploy_format(out: Path, format: str | None) -> str | None:
    """``onnx`` or ``pt2`` when ``--format`` or ``--out``'s suffix asks for a deployment file (the
    two must agree), else None (a release: engine/export.py checks its suffix)."""
    suffix = out.suffix.lower()
    if format in FORMAT_SUFFIX or (format is None and suffix in DEPLOY_SUFFIXES):
        kind = format or DEPLOY_SUFFIXES[suffix]
        if suffix != FORMAT_SUFFIX[kind]:
            raise CheckpointError(
                f"--out {out} must end in {FORMAT_SUFFIX[kind]} for --format {kind}"
            )
        return kind
    if suffix in DEPLOY_SUFFIXES:  # a release format asked of a deployment file's name
        wanted = next(ending for ending, name in FORMATS.items() if name == format)
        raise CheckpointError(f"--out {out} must end in {wanted} for --format {format}")
    return None


def deploy_metadata(
    state: dict, config: Config, model: DeepMTDR, checkpoint: Path, command: str | None
) -> dict:
    """What predict.py needs beside the network (engine/onnx_inferer.py reads it)."""
    data = config.data
    temperature, referable_threshold = release_calibration(state)
    release = state.get("release") or {}
    return {
        "format": DEPLOY_FORMAT,
        "graph": "lr [N,3,h,w] float32 in [0,1] -> sr [N,3,H,W], lesions [N,L,H,W] (sigmoid), "
        "grade_logits [N,C]",
        "precision": "fp32",
        "lr_size": data.hr_size // data.scale,
        "hr_size": data.hr_size,
        "scale": data.scale,
        "blur_kernel": data.blur_kernel,
        "blur_sigma": data.blur_sigma,
        "noise_var": data.noise_var,
        "seed": data.seed,
        "num_classes": data.num_classes,
        "num_lesions": model.seg.num_lesions if model.seg is not None else 0,
        "dataset": (release.get("data") or {}).get("terms") or data.dataset,
        "test_input": config.test.input,
        "test_tta": config.test.tta,
        "grade_decoding": model.grade_decoding,
        "grade_thresholds": [float(t) for t in model.grade_thresholds.tolist()],
        "temperature": temperature,
        "referable_threshold": referable_threshold,
        "source": str(checkpoint),
        "source_sha256": file_sha256(checkpoint),
        "release_commit": release.get("commit"),
        "export_command": command,
        "commit": git_commit(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
    }


def _write_onnx(program: torch.export.ExportedProgram, text: str, out: Path) -> None:
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise DeploymentError(
            f"ONNX export needs {' and '.join(missing)}: pip install onnx onnxscript "
            "(the versions requirements-dev.txt pins)"
        )
    program = program.run_decompositions(
        {torch.ops.aten.adaptive_max_pool2d.default: adaptive_max_pool2d_fixed}
    )
    onnx_program = torch.onnx.export(
        program,
        input_names=["lr"],
        output_names=list(OUTPUTS),
        dynamo=True,
        optimize=True,
        external_data=False,
    )
    onnx_program.model.metadata_props[METADATA_KEY] = text
    with release_file(out) as temp:
        onnx_program.save(temp, external_data=False)


def _write_pt2(program: torch.export.ExportedProgram, text: str, out: Path) -> None:
    extra = {f"{METADATA_KEY}.json": text}
    with release_file(out) as temp:
        torch.export.save(program, temp, extra_files=extra)


@dataclass(frozen=True)
class Deployed:
    path: Path
    sha256: str
    bytes: int
    metadata: dict
    max_difference: (
        dict[str, float] | None
    )  # largest |file - PyTorch| per output; None: not checked


def export_deployment(
    source: str | Path, out: str | Path, format: str | None = None, command: str | None = None
) -> Deployed:
    """Write the inference network of ``source`` (run folder, checkpoint or release) to ``out``
    (``.onnx`` or ``.pt2``) with its metadata, then compare its outputs with PyTorch's."""
    checkpoint, _ = source_checkpoint(source)
    out = Path(out)
    kind = deploy_format(out, format)
    if kind is None:
        raise CheckpointError(f"--out {out} must be a .onnx or .pt2 file for a deployment export")
    state = load_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    config.model.imagenet_weights = None
    model = build_model(config)
    load_model_state(model, state["model"], checkpoint)
    network = InferencePath(model.float().eval()).eval()
    metadata = deploy_metadata(state, config, model, checkpoint, command)
    text = json.dumps(metadata, allow_nan=False)
    size = metadata["lr_size"]
    example = torch.rand(EXAMPLE_BATCH, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # Dim.DYNAMIC: any batch, up to the bound int32 indexing sets
        program = torch.export.export(
            network, (example,), dynamic_shapes={"lr": {0: torch.export.Dim.DYNAMIC}}
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    (_write_onnx if kind == "onnx" else _write_pt2)(program, text, out)
    return Deployed(
        out, file_sha256(out), out.stat().st_size, metadata, compare_outputs(out, network, example)
    )


def compare_outputs(
    path: Path, network: nn.Module, lr: torch.Tensor, threads: int = 0
) -> dict[str, float] | None:
    """Largest ``|file - PyTorch|`` of each output on ``lr`` (None when ONNX Runtime is absent)."""
    if path.suffix == ".onnx" and importlib.util.find_spec("onnxruntime") is None:
        return None
    deployed = load_deployed(path, threads)
    with torch.no_grad():
        expected = network(lr)
    got = deployed.run(lr)
    return {
        name: float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
        for name, a, b in zip(OUTPUTS, got, expected)
    }


def print_deployed(deployed: Deployed) -> None:
    """What ``python -m engine.export`` prints for a deployment file."""
    meta = deployed.metadata
    print(
        f"wrote {deployed.path} ({deployed.bytes / 2**20:.1f} MB, float32): LR {meta['lr_size']} -> "
        f"SR {meta['hr_size']} -> {meta['num_lesions']} lesion maps -> {meta['num_classes']} grade "
        f"logits, any batch; not entered in RELEASES.json (deployment files are not releases)"
    )
    print(
        f"decoding {meta['grade_decoding']}, temperature {meta['temperature']:.3f}, referral "
        f"threshold {meta['referable_threshold'] if meta['referable_threshold'] is not None else 'default'}; "
        f"from {meta['source']} (SHA-256 {meta['source_sha256']})"
    )
    if deployed.max_difference is None:
        print("not compared with PyTorch: ONNX Runtime is not installed")
    else:
        differences = ", ".join(f"{k} {v:.2e}" for k, v in deployed.max_difference.items())
        print(f"largest difference from PyTorch on a random batch: {differences}")
    print(f"SHA-256 {deployed.sha256}")
    print(f"grade with it: python predict.py PATHS --checkpoint {deployed.path}")


def main(args: argparse.Namespace, command: str) -> int:
    """``python -m engine.export`` for a deployment file (engine/export.py's arguments)."""
    if args.train_command or args.calibrate_on or args.tta is not None:
        raise CheckpointError(
            "--train-command, --calibrate-on and --tta make a release: export the release "
            "(.pt), then the deployment file from it"
        )
    print_deployed(export_deployment(args.source, args.out, args.format, command))
    return 0
