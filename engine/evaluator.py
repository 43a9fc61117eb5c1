"""A split scored: the one inferer (engine/inference.py) over a loader, and every metric of
evaluation/metrics.py (grading, super-resolution inside the FOV and lesions, segmentation)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import DataLoader

from data.degrade import bicubic_upsample
from engine import distributed
from engine.frozen_cache import FrozenOutputs
from engine.inference import Inferer
from evaluation.metrics import (
    SegmentationMetrics,
    grading_metrics,
    lesion_region,
    psnr_per_image,
    ssim_per_image,
)
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
    predicted: torch.Tensor | None = (
        None  # grades decoded from probs by the model's rule (models/ordinal.py)
    )


class _PerImageSR:
    """Collects per-image PSNR/SSIM (FOV) and lesion PSNR; the split's numbers are their means."""

    def __init__(self) -> None:
        self.values: dict[str, list[torch.Tensor]] = {key: [] for key in SR_KEYS}

    def add(
        self, image: torch.Tensor, hr: torch.Tensor, fov: torch.Tensor, masks: torch.Tensor
    ) -> None:
        self.values["psnr"].append(psnr_per_image(image, hr, fov).cpu())
        self.values["ssim"].append(ssim_per_image(image, hr, fov).cpu())
        self.values["psnr_lesion"].append(
            psnr_per_image(image, hr, lesion_region(masks, fov)).cpu()
        )

    def gather(self) -> None:
        """Pool every process's per-image values (order does not matter for their means)."""
        for key, chunks in self.values.items():
            local = torch.cat(chunks) if chunks else torch.zeros(0)
            self.values[key] = distributed.gather_objects(local)

    def result(self) -> dict:
        out = {}
        for key, chunks in self.values.items():
            values = torch.cat(chunks).double()
            out[key] = float(values.nanmean()) if (~values.isnan()).any() else float("nan")
        out["n"] = int(torch.cat(self.values["psnr"]).numel())
        out["n_lesion"] = int((~torch.cat(self.values["psnr_lesion"]).isnan()).sum())
        return out


def _pool_processes(
    ids: list[str],
    grades: torch.Tensor,
    probs: torch.Tensor,
    predicted: torch.Tensor,
    sr_values: dict[str, _PerImageSR],
    seg: SegmentationMetrics | None,
    device: torch.device,
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each process saw its ShardSampler share; pool them back in dataset order (the SR values
    and segmentation histograms in place)."""
    ids = distributed.interleave(distributed.gather_objects(ids))
    grades = _interleave_rows(distributed.gather_objects(grades))
    probs = _interleave_rows(distributed.gather_objects(probs))
    predicted = _interleave_rows(distributed.gather_objects(predicted))
    for values in sr_values.values():
        values.gather()
    if seg is not None:
        seg.all_reduce(device)
    return ids, grades, probs, predicted


@torch.no_grad()
def evaluate(
    model: DeepMTDR,
    loader: DataLoader,
    device: torch.device,
    mode: Mode = "lr",
    autocast: Callable[[], object] = nullcontext,
    progress: Callable | None = None,
    frozen: FrozenOutputs | None = None,
    tta: bool = False,
    temperature: float = 1.0,
    referable_threshold: float | None = None,
    seg_tile: tuple[int, int] | None = None,
) -> EvalResult:
    """Run the model over ``loader`` through the one inferer (engine/inference.py) and score it.

    ``mode="lr"``: the full pipeline, LR -> SR -> lesions -> grade, with SR metrics for the SR
    image and the bicubic baseline. ``mode="hr"``: lesions and grade on the HR image (the
    upper bound the cls and seg stages train for). ``frozen``: the lesion logits of the loader's
    images in loader order, computed once while the nets that make them are frozen (the cls
    stage's validation, engine/frozen_cache.py), used for the unflipped view. ``tta``: the
    inferer's flip policy (probabilities and lesion maps averaged over four flips); SR metrics are
    the unflipped view's. ``autocast``: the precision to run in (a training's; test.py passes the
    release's ``run.amp``). ``temperature`` / ``referable_threshold``: a release's calibration and
    referral threshold (evaluation/referable.py). ``seg_tile``: (tile, overlap) of tiled segmentation
    (models/tiling.py; None or 0: whole images). Grades follow the model's decoding.
    """
    model.eval()
    inferer = Inferer(
        model, None, mode, tta=tta, autocast=autocast, temperature=temperature, seg_tile=seg_tile
    )
    sr_values = {"sr": _PerImageSR(), "bicubic": _PerImageSR()}
    seg = SegmentationMetrics(num_lesions=4, device=device) if model.use_lesions else None
    ids, grades, probs, predicted = [], [], [], []
    batches = progress(loader) if progress else loader
    seen = 0
    for batch in batches:
        hr = batch["hr"].to(device)
        masks, valid, fov = (
            batch["masks"].to(device),
            batch["mask_valid"].to(device),
            batch["fov"].to(device),
        )
        lr = batch["lr"].to(device) if mode == "lr" else None
        lesion_logits = None
        if frozen is not None:
            lesion_logits = frozen.rows(seen, seen + hr.shape[0])["lesion_logits"]
        result = inferer(hr, lr, lesion_logits)
        seen += hr.shape[0]
        if mode == "lr":
            lesion_masks = masks * valid[:, :, None, None]
            sr_values["sr"].add(result.image, hr, fov, lesion_masks)
            sr_values["bicubic"].add(bicubic_upsample(lr, model.isr.scale), hr, fov, lesion_masks)
        if seg is not None:
            seg.update(result.lesions, masks, valid)
        ids += list(batch["id"])
        grades.append(batch["grade"])
        probs.append(result.probabilities.cpu())
        predicted.append(result.grades.cpu())
    grades_all = torch.cat(grades) if grades else torch.zeros(0, dtype=torch.long)
    probs_all = torch.cat(probs) if probs else torch.zeros(0)
    predicted_all = torch.cat(predicted) if predicted else torch.zeros(0, dtype=torch.long)
    if distributed.current().distributed:
        ids, grades_all, probs_all, predicted_all = _pool_processes(
            ids, grades_all, probs_all, predicted_all, sr_values, seg, device
        )
    metrics: dict = {"mode": mode}
    thresholds = model.decision_thresholds.cpu() if model.decision_thresholds is not None else None
    if bool((grades_all >= 0).any()):
        metrics["grading"] = grading_metrics(
            grades_all.numpy(),
            probs_all.numpy(),
            thresholds,
            referable_threshold,
            predicted=predicted_all.numpy(),
        )
    if mode == "lr":
        metrics["sr"] = {name: values.result() for name, values in sr_values.items()}
    if seg is not None:
        metrics["segmentation"] = seg.compute()
    return EvalResult(metrics, ids, grades_all, probs_all, seg, predicted_all)


def _interleave_rows(per_rank: list[torch.Tensor]) -> torch.Tensor:
    """Rows of each rank's tensor back into dataset order (the inverse of ShardSampler's round robin)."""
    starts = torch.tensor([0] + [len(rows) for rows in per_rank]).cumsum(0).tolist()
    positions = distributed.interleave(
        [list(range(starts[r], starts[r + 1])) for r in range(len(per_rank))]
    )
    return torch.cat([rows for rows in per_rank if len(rows)])[
        torch.tensor(positions, dtype=torch.long)
    ]


def selection_metric(stage: str, metrics: dict) -> float:
    """The validation number each stage keeps its best checkpoint by (higher is better)."""
    if stage == "isr":
        return metrics["sr"]["sr"]["psnr"]
    if stage == "seg":
        return metrics["segmentation"]["mean"]["aupr"]
    return metrics.get("grading", {}).get("qwk", float("nan"))


def below_psnr_floor(metrics: dict, psnr_floor: float | None) -> bool:
    """Whether the SR PSNR inside the FOV (``val_psnr``) is under ``psnr_floor`` (NaN is under any
    floor); None: no floor. The joint stage's floor is train.joint_max_psnr_drop_db under its incoming PSNR."""
    if psnr_floor is None:
        return False
    psnr = metrics.get("sr", {}).get("sr", {}).get("psnr", math.nan)
    return not psnr >= psnr_floor


def is_new_best(metric: float, best: float, metrics: dict, psnr_floor: float | None = None) -> bool:
    """Whether an epoch whose selection metric is ``metric`` (:func:`selection_metric` of its validation
    ``metrics``) is the stage's new best: it beats ``best`` (a NaN never does) and the SR PSNR is not
    under ``psnr_floor``."""
    return math.isfinite(metric) and metric > best and not below_psnr_floor(metrics, psnr_floor)


STAGE_EVAL_MODE: dict[str, Mode] = {"isr": "lr", "seg": "hr", "cls": "hr", "joint": "lr"}


def stage_eval_mode(stage: str, train_input: Mode = "hr") -> Mode:
    """How a stage is validated: as it trains (the seg and cls stages on LR when ``train.input=lr``)."""
    if stage in ("seg", "cls"):
        return train_input
    return STAGE_EVAL_MODE[stage]
