"""Inference over a loader and the metrics of DESIGN.md section 6 (one implementation: evaluation.metrics)."""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
from torch.utils.data import DataLoader

from data.degrade import bicubic_upsample
from evaluation.metrics import SegmentationMetrics, grading_metrics, sr_metrics
from models import DeepMTDR

Mode = Literal["lr", "hr"]
SR_KEYS = ("psnr", "ssim", "psnr_lesion")


@dataclass
class EvalResult:
    """Metrics plus what figures and prediction CSVs need."""

    metrics: dict
    ids: list[str] = field(default_factory=list)
    grades: torch.Tensor | None = None
    probs: torch.Tensor | None = None
    seg: SegmentationMetrics | None = None


class _SRMeans:
    """Accumulates per-batch means of sr_metrics into per-image means over the whole split."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, values: dict, n_images: int, n_lesion_images: int) -> None:
        for key in SR_KEYS:
            value = values.get(key)
            weight = n_lesion_images if key == "psnr_lesion" else n_images
            if value is None or weight == 0 or math.isnan(value):
                continue
            self.sums[key] = self.sums.get(key, 0.0) + value * weight
            self.counts[key] = self.counts.get(key, 0) + weight

    def result(self) -> dict:
        out = {key: self.sums[key] / self.counts[key] if self.counts.get(key) else float("nan") for key in SR_KEYS}
        out["n"] = int(self.counts.get("psnr", 0))
        return out


@torch.no_grad()
def evaluate(
    model: DeepMTDR,
    loader: DataLoader,
    device: torch.device,
    mode: Mode = "lr",
    autocast: Callable[[], object] = nullcontext,
    progress: Callable | None = None,
) -> EvalResult:
    """Run the model over ``loader``.

    ``mode="lr"``: the full pipeline, LR -> SR -> lesions -> grade, with SR metrics for the SR
    image and the bicubic baseline. ``mode="hr"``: lesions and grade on the HR image (the
    upper bound the cls and seg stages train for).
    """
    model.eval()
    sr_means = {"sr": _SRMeans(), "bicubic": _SRMeans()}
    seg = SegmentationMetrics(num_lesions=4, device=device) if model.use_lesions else None
    ids, grades, probs = [], [], []
    batches = progress(loader) if progress else loader
    for batch in batches:
        hr = batch["hr"].to(device)
        masks, valid, fov = batch["masks"].to(device), batch["mask_valid"].to(device), batch["fov"].to(device)
        with autocast():
            if mode == "lr":
                lr = batch["lr"].to(device)
                image = model.isr(lr).float()
            else:
                image = hr
            result = model.grade_image(image)
        if mode == "lr":
            n_lesion = int(masks.flatten(1).amax(1).gt(0).sum())
            sr_means["sr"].add(sr_metrics(image, hr, fov, masks), len(hr), n_lesion)
            bicubic = bicubic_upsample(lr, model.isr.scale)
            sr_means["bicubic"].add(sr_metrics(bicubic, hr, fov, masks), len(hr), n_lesion)
        if seg is not None:
            seg.update(torch.sigmoid(result.lesion_logits.float()), masks, valid)
        ids += list(batch["id"])
        grades.append(batch["grade"])
        probs.append(torch.softmax(result.grade_logits.float(), dim=1).cpu())
    grades_all, probs_all = torch.cat(grades), torch.cat(probs)
    metrics: dict = {"mode": mode}
    if bool((grades_all >= 0).any()):
        metrics["grading"] = grading_metrics(grades_all.numpy(), probs_all.numpy())
    if mode == "lr":
        metrics["sr"] = {name: means.result() for name, means in sr_means.items()}
    if seg is not None:
        metrics["segmentation"] = seg.compute()
    return EvalResult(metrics, ids, grades_all, probs_all, seg)


def selection_metric(stage: str, metrics: dict) -> float:
    """The validation number each stage keeps its best checkpoint by (higher is better)."""
    if stage == "isr":
        return metrics["sr"]["sr"]["psnr"]
    if stage == "seg":
        return metrics["segmentation"]["mean"]["aupr"]
    return metrics.get("grading", {}).get("qwk", float("nan"))


STAGE_EVAL_MODE: dict[str, Mode] = {"isr": "lr", "seg": "hr", "cls": "hr", "joint": "lr"}
