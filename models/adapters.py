"""A DeepMT-DR model seen as one function, for tools that explain or probe a plain net."""

from __future__ import annotations

import torch
from torch import nn

from models.deepmt_dr import DeepMTDR


class GraderOnImage(nn.Module):
    """image -> grade logits through segmentation and grading, the function Grad-CAM explains."""

    def __init__(self, model: DeepMTDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.grade_image(image).grade_logits
