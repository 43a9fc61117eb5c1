"""What a saliency method explains: an image -> grade-score function with named layers.

:class:`SaliencyModel` wraps any grader that maps an image ``[N,3,H,W]`` in [0,1] to grade logits
``[N,C]``: DeepMT-DR's grader on the image plus its lesion maps (:func:`for_deepmt_dr`), or a
compared method's plain ``nn.Module`` (e.g. a torchvision ResNet). Its output appends one column
to the logits, the "any DR" score, so that every method, Captum's included, explains a
per-sample column index and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.adapters import GraderOnImage
from models.deepmt_dr import DeepMTDR
from models.ordinal import decode_grades

TARGET_CHOICES = ("predicted", "any_dr")


class SaliencyError(ValueError):
    """A bad method, layer or target name; the message lists the valid ones."""


def _contains_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


class SaliencyModel(nn.Module):
    """``image [N,3,H,W]`` in [0,1] -> scores ``[N,C+1]``: the C grade logits, then "any DR".

    "any DR" is the sum of the logits of grades 1..C-1, the published code's DR score (the
    ``any_dr`` target of ``models/cam.py``). Layers for Grad-CAM are looked up by name in
    ``root.named_modules()`` (``root`` defaults to ``classifier``); ``layer_names`` are the
    suggested ones (default: the top-level children that hold a convolution), the last is the
    default layer. ``randomisation_order`` lists the modules the sanity check re-initialises,
    output side first (default: top-level children with parameters, last to first).
    The classifier is put in eval mode: saliency explains the deployed model. ``grade_thresholds``:
    the model's ordinal cut points when it decodes grades by thresholds (models/ordinal.py), else None.
    """

    grade_thresholds: torch.Tensor | None = None

    def __init__(
        self,
        classifier: nn.Module,
        root: nn.Module | None = None,
        layer_names: Sequence[str] | None = None,
        randomisation_order: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.classifier = classifier.eval()
        self._root = (root if root is not None else classifier,)  # a tuple: not registered twice
        children = list(self.root.named_children())
        if layer_names is None:
            layer_names = [name for name, child in children if _contains_conv(child)]
        if randomisation_order is None:
            randomisation_order = [
                name for name, child in reversed(children) if any(True for _ in child.parameters())
            ]
        if not layer_names:
            raise SaliencyError("the model has no convolutional layer to explain")
        self.layer_names = list(layer_names)
        self.randomisation_order = list(randomisation_order)
        for name in [*self.layer_names, *self.randomisation_order]:
            self.layer(name)  # fail early on a wrong name

    @property
    def root(self) -> nn.Module:
        return self._root[0]

    @property
    def default_layer(self) -> str:
        """The deepest suggested layer (``layer4`` of a ResNet): Grad-CAM's usual choice."""
        return self.layer_names[-1]

    def layer(self, name: str) -> nn.Module:
        """The module called ``name`` in ``root``; :class:`SaliencyError` listing candidates if none."""
        modules = dict(self.root.named_modules())
        if not name or name not in modules:
            raise SaliencyError(
                f"unknown layer {name!r}; candidates: {', '.join(self.layer_names)} "
                "(or any other module name of the model)"
            )
        return modules[name]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(image)
        return torch.cat([logits, logits[:, 1:].sum(dim=1, keepdim=True)], dim=1)

    def targets(
        self, scores: torch.Tensor, target: str | int | torch.Tensor = "predicted"
    ) -> torch.Tensor:
        """Per-sample column indices ``[N]`` into :meth:`forward`'s scores.

        ``predicted``: each sample's predicted grade (the model's decoding). ``any_dr``: as ``models/cam.py``, grade 0
        where grade 0 is predicted, else the "any DR" column (index C). An int or an ``[N]`` tensor:
        that grade for all or per sample.
        """
        num_classes = scores.shape[1] - 1
        predicted = decode_grades(
            torch.softmax(scores[:, :num_classes].float(), dim=1), self.grade_thresholds
        )
        if isinstance(target, str):
            if target == "predicted":
                return predicted
            if target == "any_dr":
                return torch.where(predicted == 0, 0, num_classes)
            if not target.lstrip("-").isdigit():
                raise SaliencyError(
                    f"unknown target {target!r}; use {', '.join(TARGET_CHOICES)} or a grade 0..{num_classes - 1}"
                )
            target = int(target)
        index = torch.as_tensor(target, device=scores.device).long().expand(scores.shape[0])
        if index.min() < 0 or index.max() >= num_classes:
            raise SaliencyError(
                f"target grade {sorted(set(index.tolist()))} outside 0..{num_classes - 1}"
            )
        return index.clone()


def target_label(index: int, num_classes: int) -> str:
    """Readable name of a score column: ``grade 2`` or ``any DR``."""
    return "any DR" if index == num_classes else f"grade {index}"


def default_input(config) -> str:
    """The input a run is tested on: its ``test.input`` where the config has one (HR for a grader
    trained on HR images), else ``lr``, the system's."""
    return getattr(getattr(config, "test", None), "input", "lr")


def for_deepmt_dr(model: DeepMTDR) -> SaliencyModel:
    """DeepMT-DR's grader as a function of the image it grades (an SR or HR image).

    The image reaches the grader twice, directly and through the lesion segmentation, so the
    maps include both paths. Layers are named from the DeepMT-DR model: the grader's
    ``stages()`` (``grader.layer1`` .. ``grader.layer4`` for the ResNet-18 grader). The sanity
    check randomises the grader only: its top-level modules with parameters, head first.
    """
    names = {id(module): name for name, module in model.named_modules()}
    stages = [names[id(stage)] for stage in model.grader.stages()]
    children = [
        f"grader.{name}"
        for name, child in model.grader.named_children()
        if any(True for _ in child.parameters())
    ]
    explained = SaliencyModel(
        GraderOnImage(model), root=model, layer_names=stages, randomisation_order=children[::-1]
    )
    explained.grade_thresholds = model.decision_thresholds
    return explained
