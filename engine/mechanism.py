"""Whether the task-aware loss does its job, seen where the final QWK cannot separate arms (issue 25).

The task-aware loss pulls the grader's Grad-CAM on the SR image towards its Grad-CAM on the HR
image. Two signals say whether that happened, measured with the model frozen in eval mode (the
mode both CAMs of the loss use):

- **CAM agreement** between SR and HR, per image inside the field of view: mean squared difference,
  Pearson correlation, and the IoU of the top 10% pixels of each map;
- **task gap**: the same grader's QWK graded from SR minus graded from HR (0 when SR is as good as
  HR for grading; single pass, no TTA).

PSNR inside lesion regions (the SR metrics' ``psnr_lesion``) is the third signal.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader

from evaluation.metrics import grading_metrics
from models import DeepMTDR

TOP_FRACTION = 0.10


def cam_agreement(
    sr_cam: torch.Tensor, hr_cam: torch.Tensor, fov: torch.Tensor, top: float = TOP_FRACTION
) -> dict[str, torch.Tensor]:
    """Per-image ``[N]`` agreement of two CAMs ``[N,1,H,W]`` inside ``fov`` ``[N,1,H,W]``: ``mse``,
    ``pearson`` (NaN where a map is flat) and ``top_iou`` (IoU of the pixels at or above each map's
    ``1 - top`` quantile)."""
    inside = fov.flatten(1) > 0.5
    count = inside.sum(1).clamp(min=1)
    a, b = sr_cam.flatten(1).double(), hr_cam.flatten(1).double()
    mse = ((a - b) ** 2 * inside).sum(1) / count
    mean_a, mean_b = (a * inside).sum(1) / count, (b * inside).sum(1) / count
    da, db = (a - mean_a[:, None]) * inside, (b - mean_b[:, None]) * inside
    denominator = (da.pow(2).sum(1) * db.pow(2).sum(1)).sqrt()
    pearson = torch.where(
        denominator > 0, (da * db).sum(1) / denominator, torch.full_like(denominator, float("nan"))
    )
    nan = torch.tensor(float("nan"), dtype=a.dtype, device=a.device)
    cut_a = torch.nanquantile(torch.where(inside, a, nan), 1 - top, dim=1, keepdim=True)
    cut_b = torch.nanquantile(torch.where(inside, b, nan), 1 - top, dim=1, keepdim=True)
    top_a, top_b = (a >= cut_a) & inside, (b >= cut_b) & inside
    union = (top_a | top_b).sum(1)
    top_iou = torch.where(
        union > 0, (top_a & top_b).sum(1) / union.clamp(min=1), torch.ones_like(mse)
    )
    return {"mse": mse.float(), "pearson": pearson.float(), "top_iou": top_iou.float()}


def _cam_and_logits(
    model: DeepMTDR, image: torch.Tensor, target: str, autocast
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad(), autocast():
        result = model.grade_image(image)
        cam = model.attention_map(result, target, retain_graph=False)
    return cam.detach().float(), result.grade_logits.detach().float()


def mechanism_signals(
    model: DeepMTDR,
    loader: DataLoader,
    device: torch.device,
    cam_target: str = "predicted",
    autocast: Callable[[], object] = nullcontext,
) -> dict:
    """Mean CAM agreement and the task gap over ``loader`` (LR -> SR against HR; module docstring)."""
    model.eval()
    values: dict[str, list[torch.Tensor]] = {"mse": [], "pearson": [], "top_iou": []}
    grades, sr_probs, hr_probs = [], [], []
    for batch in loader:
        lr, hr, fov = batch["lr"].to(device), batch["hr"].to(device), batch["fov"].to(device)
        with torch.no_grad(), autocast():
            sr = model.isr(lr).float()
        sr_cam, sr_logits = _cam_and_logits(model, sr, cam_target, autocast)
        hr_cam, hr_logits = _cam_and_logits(model, hr, cam_target, autocast)
        for key, value in cam_agreement(sr_cam, hr_cam, fov).items():
            values[key].append(value.cpu())
        grades.append(batch["grade"])
        sr_probs.append(torch.softmax(sr_logits, 1).cpu())
        hr_probs.append(torch.softmax(hr_logits, 1).cpu())
    out: dict = {}
    for key, chunks in values.items():
        joined = torch.cat(chunks).double()
        out[f"cam_{key}"] = float(joined.nanmean()) if (~joined.isnan()).any() else float("nan")
    out["n"] = int(torch.cat(values["mse"]).numel())
    y = torch.cat(grades)
    known = y >= 0
    if bool(known.any()):
        thresholds = (
            model.decision_thresholds.cpu() if model.decision_thresholds is not None else None
        )
        qwk = {}
        for name, probs in (("sr", torch.cat(sr_probs)), ("hr", torch.cat(hr_probs))):
            qwk[name] = grading_metrics(y[known].numpy(), probs[known].numpy(), thresholds)["qwk"]
        out.update({"qwk_sr": qwk["sr"], "qwk_hr": qwk["hr"], "task_gap": qwk["sr"] - qwk["hr"]})
    return out
