"""Grade with an exported DeepMT-DR file (``python -m engine.export SOURCE --out NAME.onnx``, or
``NAME.pt2``; engine/deploy_export.py) without the network classes or the training code.

The file holds the inference network LR ``[N,3,h,w]`` float32 in [0,1] -> SR ``[N,3,H,W]``, lesion
probabilities ``[N,L,H,W]`` and grade logits ``[N,C]`` (dynamic batch, the model's LR size) and,
as JSON (an ONNX model's ``metadata_props`` entry ``deepmt_dr``; a pt2 archive's extra file
``deepmt_dr.json``), what grading around it needs: the LR degradation, the grade decoding and its
thresholds, the release's temperature and referral threshold, and the source checkpoint's SHA-256.

:class:`OnnxInferer` is :class:`engine.inference.Inferer`'s twin for such a file: the same call and
:class:`engine.inference_core.Inference` output, the same degradation (``data.degrade``), flip TTA
(``engine/tta.py``, views one after another), calibration and decoding (``combine_views``,
``models.ordinal.decode_grades``), in float32 on the CPU; no Grad-CAM (``cam`` is None). It grades
the LR pipeline only (``mode="lr"``): grading the HR image needs the checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from data.degrade import degrade
from engine.inference_core import Inference, as_unit_float, combine_views
from engine.tta import FLIPS, flip
from models.ordinal import decode_grades

METADATA_KEY = "deepmt_dr"  # the ONNX metadata_props key; the pt2 extra file is METADATA_KEY.json
DEPLOY_FORMAT = "deepmt-dr-deploy-1"
DEPLOY_SUFFIXES = {".onnx": "onnx", ".pt2": "pt2"}
OUTPUTS = ("sr", "lesions", "grade_logits")
INSTALL = "pip install onnxruntime (the version requirements-dev.txt pins)"
# ONNX Runtime's graph optimisation levels by name (onnxruntime.GraphOptimizationLevel).
OPTIMIZATION_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}

Runner = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


class DeploymentError(RuntimeError):
    """An exported file that cannot run here (not a DeepMT-DR export, or its runtime is missing)."""


def is_deployment_file(path: str | Path) -> bool:
    """Whether ``path`` names an exported network (``.onnx`` or ``.pt2``) rather than a checkpoint."""
    return Path(path).suffix.lower() in DEPLOY_SUFFIXES


@dataclass(frozen=True)
class DeployedModel:
    """An exported file, loaded: ``run(lr)`` -> (SR, lesion probabilities, grade logits)."""

    path: Path
    metadata: dict
    runtime: str  # e.g. "ONNX Runtime 1.32.0 (CPUExecutionProvider, 2 threads)"
    run: Runner

    @property
    def config(self) -> SimpleNamespace:
        """The parts of an ``engine.config.Config`` that predict.py reads, from the metadata; the
        file runs the LR pipeline, so ``test.input`` is ``lr``."""
        meta = self.metadata
        data = SimpleNamespace(
            **{
                key: meta[key]
                for key in ("hr_size", "scale", "num_classes", "blur_kernel", "blur_sigma")
            },
            noise_var=meta["noise_var"],
            seed=meta["seed"],
            dataset=meta.get("dataset"),
        )
        return SimpleNamespace(data=data, test=SimpleNamespace(input="lr", tta=meta["test_tta"]))


def read_metadata(text: str | None, path: Path) -> dict:
    """The export's metadata from its JSON text; a one-line error for a file that has none."""
    try:
        metadata = json.loads(text) if text else None
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict) or metadata.get("format") != DEPLOY_FORMAT:
        raise DeploymentError(
            f"{path} is not a DeepMT-DR deployment file (no {METADATA_KEY} metadata of format "
            f"{DEPLOY_FORMAT}): export one with python -m engine.export CHECKPOINT --out {path.name}"
        )
    return metadata


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _onnx_runner(path: Path, threads: int, optimization: str) -> tuple[dict, str, Runner]:
    try:
        import onnxruntime
    except ImportError:
        raise DeploymentError(f"running {path.name} needs ONNX Runtime: {INSTALL}") from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = getattr(
        onnxruntime.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization]
    )
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # ORT raises its own classes for unreadable or invalid models
        raise DeploymentError(f"ONNX Runtime cannot load {path}: {_one_line(error)}") from None
    metadata = read_metadata(session.get_modelmeta().custom_metadata_map.get(METADATA_KEY), path)
    used = session.get_session_options().intra_op_num_threads or "default"
    runtime = (
        f"ONNX Runtime {onnxruntime.__version__} (CPUExecutionProvider, {used} threads, "
        f"graph optimisation {optimization})"
    )

    def run(lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = session.run(list(OUTPUTS), {"lr": lr.contiguous().numpy()})
        return tuple(torch.from_numpy(output) for output in outputs)

    return metadata, runtime, run


def _pt2_runner(path: Path) -> tuple[dict, str, Runner]:
    extra = {f"{METADATA_KEY}.json": ""}
    try:
        program = torch.export.load(str(path), extra_files=extra)
    except Exception as error:  # torch raises several classes for a file that is not an archive
        raise DeploymentError(f"torch.export cannot load {path}: {_one_line(error)}") from None
    metadata = read_metadata(extra[f"{METADATA_KEY}.json"], path)
    module = program.module()

    @torch.no_grad()
    def run(lr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return tuple(output.float() for output in module(lr.contiguous()))

    return metadata, f"PyTorch {torch.__version__} (torch.export program, eager)", run


def load_deployed(path: str | Path, threads: int = 0, optimization: str = "all") -> DeployedModel:
    """Load an exported ``.onnx`` (ONNX Runtime, CPU, ``threads`` intra-op threads, 0: ONNX
    Runtime's default; graph ``optimization`` one of :data:`OPTIMIZATION_LEVELS`) or ``.pt2``
    (torch.export) file with its metadata."""
    path = Path(path)
    if not path.is_file():
        raise DeploymentError(f"deployment file not found: {path}")
    kind = DEPLOY_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DeploymentError(f"{path} is not an exported network (.onnx or .pt2)")
    if kind == "onnx":
        metadata, runtime, run = _onnx_runner(path, threads, optimization)
    else:
        metadata, runtime, run = _pt2_runner(path)
    return DeployedModel(path, metadata, runtime, run)


class OnnxInferer:
    """``OnnxInferer(load_deployed("model.onnx"), "lr", tta=True)(hr)`` -> :class:`Inference`:
    :class:`engine.inference.Inferer`'s policy on an exported file (float32, CPU, no Grad-CAM).

    ``temperature``: None takes the one the export recorded (a release's calibration; else 1)."""

    def __init__(
        self,
        deployed: DeployedModel,
        mode: str = "lr",
        tta: bool = False,
        temperature: float | None = None,
    ) -> None:
        if mode != "lr":
            raise DeploymentError(
                f"{deployed.path.name} runs LR -> SR -> lesions -> grade: grading the HR image "
                "(--input hr) needs the checkpoint (.pt or .safetensors)"
            )
        meta = deployed.metadata
        if temperature is None:
            temperature = meta.get("temperature") or 1.0
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.deployed, self.mode, self.temperature = deployed, mode, float(temperature)
        self.views = FLIPS if tta else FLIPS[:1]
        self.device = torch.device("cpu")
        self.speed = None  # no autocast or memory-format choice: the file fixes float32
        self.thresholds = (
            torch.tensor(meta["grade_thresholds"], dtype=torch.float32)
            if meta["grade_decoding"] == "thresholds"
            else None
        )
        self._noise = torch.Generator()

    @property
    def precision(self) -> str:
        return "fp32"

    def degrade(self, hr: torch.Tensor) -> torch.Tensor:
        """The model's LR input of ``hr`` ``[N,3,H,W]`` in [0,1], as ``Inferer.degrade`` makes it."""
        meta = self.deployed.metadata
        generator = None
        if meta["noise_var"] > 0:
            generator = self._noise.manual_seed(meta["seed"])
        return degrade(
            hr,
            meta["scale"],
            meta["blur_kernel"],
            meta["blur_sigma"],
            meta["noise_var"],
            generator,
        )

    def decode(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Grades ``[N]`` of probabilities ``[N,C]`` by the exported model's decoding rule."""
        return decode_grades(probabilities, self.thresholds)

    @torch.no_grad()
    def __call__(
        self,
        hr: torch.Tensor | None = None,
        lr: torch.Tensor | None = None,
        lesion_logits: torch.Tensor | None = None,
        cam: bool = False,
    ) -> Inference:
        """Run the file on a batch: ``hr`` ``[N,3,H,W]`` in [0,1] or uint8, or its LR input ``lr``
        (made from ``hr`` when None). ``lesion_logits`` cannot be given (the file computes them);
        ``cam`` is accepted and gives no map (``cam=None``)."""
        if lesion_logits is not None:
            raise ValueError("an exported file computes its own lesion maps: lesion_logits=None")
        if lr is None:
            if hr is None:
                raise ValueError("mode lr needs an HR or an LR image")
            lr = self.degrade(as_unit_float(hr, self.device))
        lr = as_unit_float(lr, self.device)
        view_logits, view_lesions, image = [], [], None
        for dims in self.views:
            sr, lesions, logits = self.deployed.run(flip(lr, dims))
            view_logits.append(logits.float())
            view_lesions.append(flip(lesions.float(), dims))
            image = sr if image is None else image  # the unflipped view's (FLIPS[0])
        return combine_views(view_logits, view_lesions, self.temperature, self.decode, image, lr)
