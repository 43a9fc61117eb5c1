"""DeepMT-DR: ISR -> lesion segmentation on SR -> grading on SR + lesion maps, in one graph."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from models.cam import CAMFusion, CamTarget, minmax_normalise, stage_cams, target_weights
from models.lesion_seg import LesionSegNet
from models.ordinal import GRADE_DECODINGS, decode_grades, default_thresholds

# Grad-CAM of the task-aware loss: the four grader stages fused (published) or the last stage alone.
CAM_STAGES = ("all", "last")


class Outputs(NamedTuple):
    """``sr [N,3,H,W]`` in [0,1]; ``lesion_logits [N,4,H,W]`` (sigmoid -> probabilities); ``grade_logits [N,C]``."""

    sr: torch.Tensor
    lesion_logits: torch.Tensor
    grade_logits: torch.Tensor


class GradeResult(NamedTuple):
    """What grading an image yields: lesion logits, grade logits and the grader's stage outputs."""

    lesion_logits: torch.Tensor
    grade_logits: torch.Tensor
    features: list[torch.Tensor]


def any_lesion_map(lesion_probs: torch.Tensor) -> torch.Tensor:
    """``[N,L,H,W]`` probabilities -> ``[N,1,H,W]`` probability that any lesion is present."""
    return 1 - torch.prod(1 - lesion_probs, dim=1, keepdim=True)


class DeepMTDR(nn.Module):
    """The three sub-nets plus the CAM fusion of the task-aware loss; each sub-net works alone.

    ``isr``: lr ``[N,3,h,w]`` -> ``[N,3,H,W]`` in [0,1] with a ``scale`` attribute (the ISR net,
    or a parameter-free bicubic upsampler when ISR is ablated). ``seg=None`` (segmentation
    ablated) feeds the grader the image alone. ``grader``: any net with ``num_lesions``,
    ``stages()`` and ``forward_features(x) -> (logits, stage outputs)`` (models/registry.py
    GRADERS). ``cam_stages="last"`` makes the task-aware attention the last stage's Grad-CAM
    instead of the fused multi-scale map. ``grade_decoding`` (models/ordinal.py): a grade is the
    argmax of the ``num_classes`` probabilities, or their expected grade cut at the buffer
    ``grade_thresholds`` ``[C-1]`` (saved with the weights; fitted on the training images).
    ``grader_size``: the side the grader works at (:meth:`grader_input`); 0: the image's.
    """

    def __init__(
        self,
        isr: nn.Module,
        seg: LesionSegNet | None,
        grader: nn.Module,
        cam_stages: str = "all",
        num_classes: int = 5,
        grade_decoding: str = "argmax",
        grader_size: int = 0,
    ) -> None:
        super().__init__()
        if grader_size < 0:
            raise ValueError(f"grader_size must be >= 0 (0: the image's size), got {grader_size}")
        expected = seg.num_lesions if seg is not None else 0
        if grader.num_lesions != expected:
            raise ValueError(
                f"grader takes {grader.num_lesions} lesion channels but the seg net gives {expected}"
            )
        if cam_stages not in CAM_STAGES:
            raise ValueError(f"cam_stages must be one of {CAM_STAGES}, got {cam_stages!r}")
        if grade_decoding not in GRADE_DECODINGS:
            raise ValueError(
                f"grade_decoding must be one of {GRADE_DECODINGS}, got {grade_decoding!r}"
            )
        self.isr = isr
        self.seg = seg
        self.grader = grader
        self.cam_stages = cam_stages
        self.cam_fusion = CAMFusion(num_stages=len(grader.stages()))
        self.grade_decoding = grade_decoding
        self.grader_size = grader_size
        self.register_buffer("grade_thresholds", default_thresholds(num_classes))

    @property
    def use_lesions(self) -> bool:
        return self.seg is not None

    @property
    def decision_thresholds(self) -> torch.Tensor | None:
        """The expected-grade cut points ``[C-1]`` when grades are decoded by thresholds; None: argmax."""
        return self.grade_thresholds if self.grade_decoding == "thresholds" else None

    def predict_grades(self, probs: torch.Tensor) -> torch.Tensor:
        """Predicted grades ``[N]`` of class probabilities ``[N,C]``, by the model's decoding rule."""
        return decode_grades(probs, self.decision_thresholds)

    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """Lesion logits ``[N,4,H,W]`` of an image; ``[N,0,H,W]`` when segmentation is ablated."""
        if self.seg is None:
            return image.new_zeros((image.shape[0], 0, *image.shape[-2:]))
        return self.seg(image)

    def grader_input(self, image: torch.Tensor, lesion_logits: torch.Tensor) -> torch.Tensor:
        """``[N,3+L,S,S]``: the image and its lesion probabilities as the grader sees them.

        With ``grader_size`` S under the image's size (an integer factor k of it), the image is
        averaged over k x k blocks and the lesion probabilities max-pooled: segmentation runs at
        full resolution, where a microaneurysm is a few pixels, and a one-pixel lesion reaches
        the grader at full strength while the grader costs k^2 times less.
        """
        probs = torch.sigmoid(lesion_logits)
        size = image.shape[-1]
        if not self.grader_size or self.grader_size >= size:
            return torch.cat([image, probs], dim=1)
        if image.shape[-2] % self.grader_size or size % self.grader_size:
            raise ValueError(
                f"the grader takes {self.grader_size} px: the image's {tuple(image.shape[-2:])} "
                "must be a multiple of it"
            )
        factor = size // self.grader_size
        return torch.cat([F.avg_pool2d(image, factor), F.max_pool2d(probs, factor)], dim=1)

    def grade_with_lesions(self, image: torch.Tensor, lesion_logits: torch.Tensor) -> GradeResult:
        """Grade ``image`` given its lesion logits (e.g. computed once under ``no_grad``)."""
        grader_input = self.grader_input(image, lesion_logits)
        grade_logits, features = self.grader.forward_features(grader_input)
        return GradeResult(lesion_logits, grade_logits, features)

    def grade_image(self, image: torch.Tensor) -> GradeResult:
        """Segment and grade an SR or HR image ``[N,3,H,W]`` in [0,1]."""
        return self.grade_with_lesions(image, self.segment(image))

    def forward(self, lr: torch.Tensor) -> Outputs:
        """lr ``[N,3,h,w]`` in [0,1] -> :class:`Outputs` at the HR size."""
        sr = self.isr(lr)
        result = self.grade_image(sr)
        return Outputs(sr, result.lesion_logits, result.grade_logits)

    def attention_map(
        self, result: GradeResult, target: CamTarget = "predicted", retain_graph: bool = True
    ) -> torch.Tensor:
        """Fused multi-stage Grad-CAM ``[N,1,H,W]`` in [0,1] of a :meth:`grade_image` result
        (with ``cam_stages="last"``: the last stage's Grad-CAM, resized and min-max normalised)."""
        weights = target_weights(result.grade_logits, target, self.decision_thresholds)
        size = result.lesion_logits.shape[-2:]
        if self.cam_stages == "last":
            (cam,) = stage_cams(
                result.grade_logits, result.features[-1:], weights, retain_graph=retain_graph
            )
            return minmax_normalise(
                F.interpolate(cam, size=size, mode="bilinear", align_corners=False)
            )
        cams = stage_cams(result.grade_logits, result.features, weights, retain_graph=retain_graph)
        return self.cam_fusion(cams, size)
