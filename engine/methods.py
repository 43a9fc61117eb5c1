"""Named methods: DeepMT-DR and the compared baselines as recipes over the one config.

A method is a set of config overrides (dotted keys) applied over the YAML preset and under the
command-line overrides (``train.py --method lr_cls data.hr_size=256``): which sub-nets exist
(``model.isr``, ``model.use_lesions``, ``model.grader``), which stages run (``train.stage``), what
the seg and cls stages learn from (``train.input``) and what ``test.py`` grades
(``test.input``). Every method shares the data, the engine and the metrics, so table rows differ
only in these switches. ``Compared Methods/README.md`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Method:
    summary: str  # one line for --help, READMEs and tables
    overrides: dict[str, Any] = field(default_factory=dict)
    # Graders trained in the cls stage alone get cls.epochs + joint.epochs epochs: as many as
    # DeepMT-DR's grader sees in its cls and joint stages together.
    pool_grader_epochs: bool = False


# The structure of DeepMT-DR, spelled out so that --method deepmt_dr means it whatever the preset says.
_DEEPMT_DR = {
    "model.isr": "net",
    "model.use_lesions": True,
    "model.grader": "resnet18_spp",
    "train.stage": "all",
    "train.input": "hr",
    "test.input": "lr",
}
# Single-task baselines have neither feedback loss.
_NO_FEEDBACK = {"loss.task_aware_weight": 0.0, "loss.seg_aware_weight": 0.0}
_LR_GRADER = {
    **_DEEPMT_DR,
    **_NO_FEEDBACK,
    "model.isr": "bicubic",
    "model.use_lesions": False,
    "train.stage": "cls",
    "train.input": "lr",
}

METHODS: dict[str, Method] = {
    "deepmt_dr": Method(
        "DeepMT-DR: ISR -> lesion segmentation -> ResNet-18 grader, stages isr, seg, cls, joint with the task- and seg-aware losses",
        _DEEPMT_DR,
    ),
    "lr_cls": Method(
        "ResNet-18 grader on the bicubic-upsampled LR image (the naive baseline)",
        _LR_GRADER,
        pool_grader_epochs=True,
    ),
    "hr_then_lr_cls": Method(
        "ResNet-18 grader trained on the HR image (cls stage), then fine-tuned on the bicubic-upsampled LR image (joint stage): DeepMT-DR's grader curriculum without ISR and lesion maps",
        # The start DeepMT-DR's grader has (trained on HR, then moved to its LR-derived input), so
        # the comparison with lr_cls separates that curriculum from the ISR net and lesion maps.
        {**_LR_GRADER, "train.stage": "cls,joint", "train.input": "hr"},
    ),
    "hr_cls": Method(
        "ResNet-18 grader trained and tested on the true HR image (upper bound)",
        {**_LR_GRADER, "train.input": "hr", "test.input": "hr"},
        pool_grader_epochs=True,
    ),
    "sr_then_cls": Method(
        "two-stage: ISR net trained alone (pixel + TV), then a ResNet-18 grader on its output (ISR frozen)",
        {**_LR_GRADER, "model.isr": "net", "train.stage": "isr,cls"},
        pool_grader_epochs=True,
    ),
    "seg_then_cls": Method(
        "lesion segmentation net trained on the bicubic-upsampled LR image, then a ResNet-18 grader on image + lesion maps",
        {**_LR_GRADER, "model.use_lesions": True, "train.stage": "seg,cls"},
        pool_grader_epochs=True,
    ),
    "chen": Method(
        "Chen et al. 2015 CNN (chen_net.py, 4 conv + 2 FC) on the bicubic-upsampled LR image",
        # The published network's own ReLU head, whatever head the preset gives ResNet graders.
        {
            **_LR_GRADER,
            "model.grader": "chen_net",
            "model.grader_hidden": 256,
            "model.grader_head_activation": "relu",
            "model.grader_width": 1.0,
        },
        pool_grader_epochs=True,
    ),
    "resnet50_cls": Method(
        "torchvision ResNet-50 (from scratch, or model.imagenet_weights=PATH) on the bicubic-upsampled LR image",
        # torchvision's widths, whatever width the preset gives the ResNet-18 grader.
        {**_LR_GRADER, "model.grader": "resnet50", "model.grader_width": 1.0},
        pool_grader_epochs=True,
    ),
}
