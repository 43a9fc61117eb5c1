"""The one way the model runs on images: test.py (through engine/evaluator.py), predict.py, the
test panels, the saliency CLI and the benchmarks all call :class:`Inferer`, so a photograph gets
the same grade whichever command grades it.

One policy for each choice:

- **Precision**: ``run.amp`` resolved for the device and autocast in ``run.amp_dtype`` by the rule
  training uses too (``engine/runtime.py``: ``auto`` is bf16 where the CPU or GPU has it, else
  fp32), unless the caller passes the autocast of a running training or an explicit ``amp``.
- **LR input**: given with the HR image (a dataset's own LR), or made from it by
  :func:`data.degrade.degrade` with the config's blur, scale and noise, as the training cache
  does (noise drawn from a generator seeded by ``data.seed``; every real-data preset has none).
- **Test-time augmentation** (``tta``): the four flips of the input (``engine/tta.py``); each view
  runs the whole pipeline (ISR, segmentation, grading); the grade probabilities and the lesion
  maps (flipped back) are averaged over the views. The SR image is the unflipped view's.
- **Batching**: one forward per view over the caller's batch; views run one after another, so
  memory is that of one pass whatever ``tta``.
- **Calibration**: the probabilities reported are ``softmax(logits / temperature)`` (a release's
  temperature, fitted on validation at export; 1 otherwise), averaged over the views.
- **Decisions**: the grade is the model's decoding of its own averaged probabilities
  (``DeepMTDR.predict_grades``: argmax, or the expected grade cut at thresholds fitted on those
  unscaled probabilities, so a temperature never moves a grade); referable DR follows
  ``evaluation/referable.py`` on the reported (calibrated) probabilities.
- **Grad-CAM** (on request): of the decoded grade, at the grader's last stage, on the unflipped
  view, from the same forward pass (``models.cam.gradcam_in_forward``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

from data.degrade import degrade
from engine.config import Config
from engine.inference_core import (
    MODES,
    Inference,
    as_unit_float,
    combine_views,
    release_calibration,
)
from engine.runtime import SpeedChoice, autocast_factory, resolve_speed
from engine.tta import FLIPS, flip
from models import DeepMTDR
from models.cam import gradcam_in_forward
from models.tiling import tiled_apply

# Inference, MODES and release_calibration live in engine/inference_core.py (shared with the
# ONNX Runtime inferer) and are imported from here as before.
__all__ = ["MODES", "Inference", "Inferer", "release_calibration"]


class Inferer:
    """``Inferer(model, config, "lr", tta=True)(hr)`` -> :class:`Inference`.

    ``mode``: ``lr`` runs LR -> SR -> lesions -> grade; ``hr`` grades the HR image itself.
    ``autocast``: a zero-argument context factory to run under (a training's); None resolves
    ``amp`` (``"auto"``, True or False; None: the config's ``run.amp``) for the model's device.
    ``config`` (the checkpoint's) gives the LR degradation and ``run.amp``; None when every batch
    brings its LR image and ``autocast`` is given. ``temperature``: a release's calibration.
    ``seg_tile``: ``(tile, overlap)`` segments images larger than ``tile`` by blended windows
    (models/tiling.py); None takes the config's ``test.seg_tile`` / ``test.seg_tile_overlap``
    (0: whole images).
    """

    def __init__(
        self,
        model: DeepMTDR,
        config: Config | None,
        mode: str = "lr",
        tta: bool = False,
        amp: str | bool | None = None,
        autocast: Callable[[], object] | None = None,
        temperature: float = 1.0,
        seg_tile: tuple[int, int] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.model, self.config, self.mode = model, config, mode
        self.temperature = float(temperature)
        if seg_tile is None and config is not None:
            seg_tile = (config.test.seg_tile, config.test.seg_tile_overlap)
        self.seg_tile = seg_tile or (0, 0)
        self.views = FLIPS if tta else FLIPS[:1]
        self.device = next(model.parameters()).device
        if autocast is None:
            if config is None:
                raise ValueError("an Inferer without a config needs the autocast to run under")
            self.speed = resolve_speed(
                config.run.amp if amp is None else amp,
                config.run.channels_last,
                self.device,
                config.run.amp_dtype,
            )
            autocast = autocast_factory(self.device, self.speed.amp, config.run.amp_dtype)
            if self.speed.channels_last:
                model.to(memory_format=torch.channels_last)
        else:
            self.speed = SpeedChoice(False, False, "the caller's autocast")
        self.autocast = autocast
        self.memory_format = (
            torch.channels_last if self.speed.channels_last else torch.contiguous_format
        )
        self._noise = torch.Generator(device=self.device)

    @property
    def precision(self) -> str:
        """``bf16 autocast``, ``fp16 autocast`` or ``fp32``, for reports."""
        with self.autocast():
            enabled = torch.is_autocast_enabled(self.device.type)
            dtype = torch.get_autocast_dtype(self.device.type) if enabled else None
        return {torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}.get(dtype, "fp32")

    def degrade(self, hr: torch.Tensor) -> torch.Tensor:
        """The model's LR input of ``hr`` ``[N,3,H,W]`` in [0,1], made as the training cache makes it."""
        if self.config is None:
            raise ValueError("this Inferer has no config to degrade with: pass the LR image")
        data = self.config.data
        generator = None
        if data.noise_var > 0:
            generator = self._noise.manual_seed(data.seed)
        return degrade(hr, data.scale, data.blur_kernel, data.blur_sigma, data.noise_var, generator)

    @torch.no_grad()
    def __call__(
        self,
        hr: torch.Tensor | None = None,
        lr: torch.Tensor | None = None,
        lesion_logits: torch.Tensor | None = None,
        cam: bool = False,
    ) -> Inference:
        """Run the model on a batch.

        ``hr`` ``[N,3,H,W]`` in [0,1] (float) or uint8; ``lr``: the LR input, when the data gives
        one (else made from ``hr``; mode ``lr`` needs one of them). ``lesion_logits``: the
        unflipped view's lesion logits, computed earlier by frozen nets (used, not recomputed).
        """
        hr = as_unit_float(hr, self.device)
        if self.mode == "lr":
            if lr is None:
                if hr is None:
                    raise ValueError("mode lr needs an HR or an LR image")
                lr = self.degrade(hr)
            source = lr = as_unit_float(lr, self.device)
        else:
            if hr is None:
                raise ValueError("mode hr needs the HR image")
            source = hr
        count = source.shape[0]
        view_logits, view_lesions = [], []
        for dims in self.views[1:]:  # the flipped views first; the unflipped one may explain
            logits, lesions, _, _ = self._run_view(flip(source, dims), None)
            view_logits.append(logits)
            view_lesions.append(flip(lesions, dims))
        logits, lesions, image, cam_map = self._run_view(
            source, lesion_logits, view_logits if cam else None, explain=cam
        )
        view_logits.insert(0, logits)
        view_lesions.insert(0, lesions)
        return combine_views(
            view_logits,
            view_lesions,
            self.temperature,
            self.model.predict_grades,
            image,
            lr if self.mode == "lr" else None,
            cam_map[:count, 0].float() if cam_map is not None else None,
        )

    def _run_view(
        self,
        source: torch.Tensor,
        lesion_logits: torch.Tensor | None,
        other_views: list[torch.Tensor] | None = None,
        explain: bool = False,
    ):
        """One view through the pipeline: grade logits, lesion probabilities, graded image, CAM."""
        model = self.model
        source = source.contiguous(memory_format=self.memory_format)
        with self.autocast():
            image = model.isr(source).float() if self.mode == "lr" else source
            if lesion_logits is None:
                lesion_logits = self.segment(image)
            if explain:
                logits, cam_map = gradcam_in_forward(
                    lambda: model.grade_with_lesions(image, lesion_logits).grade_logits,
                    model.grader.stages()[-1],
                    tuple(image.shape[-2:]),
                    self._decoded_grade_weights(other_views or []),
                )
            else:
                logits, cam_map = model.grade_with_lesions(image, lesion_logits).grade_logits, None
        return logits.float(), torch.sigmoid(lesion_logits.float()), image, cam_map

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """Lesion logits of ``image``: whole, or by blended windows when it is larger than the tile."""
        tile, overlap = self.seg_tile
        if tile and max(image.shape[-2:]) > tile:
            return tiled_apply(self.model.segment, image, tile, overlap)
        return self.model.segment(image)

    def _decoded_grade_weights(
        self, other_views: list[torch.Tensor]
    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """Grad-CAM's score weights: one-hot of the grade decoded from all views' logits."""

        def weights_of(logits: torch.Tensor) -> torch.Tensor:
            views = torch.stack([logits.float(), *other_views])
            probabilities = torch.softmax(views, dim=2).mean(0)
            grades = self.model.predict_grades(probabilities)
            return F.one_hot(grades, logits.shape[1]).to(logits.dtype)

        return weights_of
