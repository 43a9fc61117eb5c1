"""What the two inferers share: :class:`engine.inference.Inferer` (the PyTorch model) and
:class:`engine.onnx_inferer.OnnxInferer` (an exported file in ONNX Runtime), so that both turn the
views of a batch into the same :class:`Inference` by the same rules (engine/inference.py's
docstring states them). Imports no network class and no training code: the ONNX Runtime path of
predict.py runs without them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from evaluation.referable import referable_probability

MODES = ("lr", "hr")


@dataclass
class Inference:
    """What one batch gives; every tensor on the model's device, float32 where it is a number."""

    probabilities: (
        torch.Tensor
    )  # [N,C] grade probabilities (mean over the views; temperature-scaled)
    grades: torch.Tensor  # [N] long: the model's decoding of its own (unscaled) probabilities
    view_logits: torch.Tensor  # [V,N,C] grade logits of each view (what temperature fitting needs)
    p_referable: torch.Tensor  # [N]: probability of referable DR (evaluation/referable.py)
    lesions: torch.Tensor  # [N,L,H,W] lesion probabilities (mean over the views); L=0 when ablated
    image: torch.Tensor  # [N,3,H,W] the graded image of the unflipped view: SR (lr) or HR (hr)
    lr: torch.Tensor | None = None  # [N,3,h,w] the LR input (mode lr)
    cam: torch.Tensor | None = None  # [N,H,W] Grad-CAM of the decoded grade, in [0,1]


def combine_views(
    view_logits: list[torch.Tensor],
    view_lesions: list[torch.Tensor],
    temperature: float,
    decode: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    lr: torch.Tensor | None = None,
    cam: torch.Tensor | None = None,
) -> Inference:
    """The :class:`Inference` of a batch's views (unflipped view first; lesion maps already flipped
    back): probabilities ``mean(softmax(logits / temperature))``, the grade ``decode`` of the
    unscaled mean (so a temperature never moves a grade), ``p_referable`` of the reported
    probabilities, lesion maps averaged."""
    logits = torch.stack(view_logits)
    probabilities = torch.softmax(logits / temperature, dim=2).mean(0)
    return Inference(
        probabilities=probabilities,
        grades=decode(torch.softmax(logits, dim=2).mean(0)),
        view_logits=logits,
        p_referable=referable_probability(probabilities),
        lesions=torch.stack(view_lesions).mean(0),
        image=image,
        lr=lr,
        cam=cam,
    )


def as_unit_float(images: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """uint8 ``[0,255]`` or float ``[0,1]`` images -> float32 ``[0,1]`` on ``device``."""
    if images is None:
        return None
    images = images.to(device, non_blocking=True)
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def release_calibration(state: dict) -> tuple[float, float | None]:
    """``(temperature, referable_threshold)`` a checkpoint's release metadata fixes (set by
    ``python -m engine.export`` from validation predictions); ``(1.0, None)`` for a training run's
    checkpoint or an older release."""
    release = state.get("release") or {}
    temperature = (release.get("calibration") or {}).get("temperature") or 1.0
    return float(temperature), release.get("referable_threshold")
