"""Evaluate a trained checkpoint on a split: metrics.json, predictions CSV and figures."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from data.cache import MANIFEST, read_settings
from data.degrade import bicubic_upsample
from data.records import DataError
from data.splits import load_groups, split_name
from engine.builders import build_dataset, build_loader, build_model, cache_path, select_device
from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import Config, config_from_dict, validate
from engine.evaluator import EvalResult, Mode, evaluate
from engine.mechanism import mechanism_signals
from engine.runtime import configure_threads
from evaluation import report
from evaluation.metrics import roc_curves
from evaluation.uncertainty import uncertainty_report
from models import DeepMTDR
from models.cam import gradcam

log = logging.getLogger(__name__)


class GraderOnImage(nn.Module):
    """image -> grade logits through segmentation and grading, the function Grad-CAM explains."""

    def __init__(self, model: DeepMTDR) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model.grade_image(image).grade_logits


def load_trained(checkpoint: str | Path, device: str = "auto") -> tuple[DeepMTDR, Config, dict]:
    """Model and config rebuilt from a checkpoint (the config inside it decides the architecture)."""
    state = load_checkpoint(checkpoint)
    config = config_from_dict(state["config"])
    config.model.imagenet_weights = None  # the checkpoint already holds the trained weights
    model = build_model(config)
    load_model_state(model, state["model"], checkpoint)
    return model.to(select_device(device)).eval(), config, state


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def write_predictions(result: EvalResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        classes = result.probs.shape[1]
        writer.writerow(["id", "grade", "predicted", *[f"p{c}" for c in range(classes)]])
        for sample_id, grade, predicted, probs in zip(
            result.ids, result.grades.tolist(), result.predicted.tolist(), result.probs.tolist()
        ):
            writer.writerow([sample_id, grade, predicted, *[f"{p:.5f}" for p in probs]])


def sample_panels(
    model: DeepMTDR, dataset, device: torch.device, count: int, out_dir: Path, mode: Mode = "lr"
) -> list[Path]:
    """LR, bicubic, SR, HR, lesion maps vs ground truth and Grad-CAM for the first ``count`` samples.

    Lesion maps, grade and Grad-CAM (last grader stage) are of the image graded in ``mode``: SR or HR.
    """
    if count <= 0:
        return []
    batch = next(iter(build_loader(dataset, min(count, len(dataset)), False, 0)))
    lr, hr = batch["lr"].to(device), batch["hr"].to(device)
    with torch.no_grad():
        sr = model.isr(lr)
        graded = sr if mode == "lr" else hr
        lesion_probs = torch.sigmoid(model.segment(graded))
        grade_probs = torch.softmax(model.grade_image(graded).grade_logits, dim=1)
        predicted = model.predict_grades(grade_probs)
    cam = gradcam(GraderOnImage(model), model.grader.stages()[-1], graded, target=predicted)
    bicubic = bicubic_upsample(lr, model.isr.scale)
    paths = []
    for i, sample_id in enumerate(batch["id"]):
        grade = int(predicted[i])
        title = f"{sample_id}: grade {int(batch['grade'][i])}, predicted {grade} (p={float(grade_probs[i, grade]):.2f})"
        paths.append(
            report.plot_sample_panel(
                out_dir / f"sample_{sample_id}.png",
                lr[i].cpu(),
                bicubic[i].cpu(),
                sr[i].cpu(),
                hr[i].cpu(),
                lesion_probs[i].cpu(),
                batch["masks"][i],
                cam=cam[i].cpu(),
                title=title,
                lesion_valid=batch["mask_valid"][i].tolist(),
            )
        )
    return paths


def metrics_file(
    run_dir: Path,
    split: str,
    mode: Mode,
    test_input: Mode,
    checkpoint: str | Path = "best.pt",
    tta: bool = False,
    test_tta: bool = False,
) -> Path:
    """``metrics.json`` for the test split in the run's own mode (and its own ``test.tta``), else
    ``metrics_<split>_<mode>.json``; flip TTA other than the run's adds ``_tta`` / ``_no_tta`` and a
    stage checkpoint (``isr_best.pt``) its name (``metrics_val_lr_tta_isr_best.json``), so one
    evaluation never overwrites another's."""
    own = (split, mode, tta) == ("test", test_input, test_tta)
    suffix = "" if own else f"_{split}_{mode}{tta_tag(tta, test_tta)}"
    return Path(run_dir) / f"metrics{suffix}{checkpoint_tag(checkpoint)}.json"


def tta_tag(tta: bool, test_tta: bool) -> str:
    """``""`` when the evaluation uses the run's own ``test.tta``, else ``_tta`` or ``_no_tta``."""
    return "" if tta == test_tta else ("_tta" if tta else "_no_tta")


def run_folder_of(checkpoint: str | Path) -> Path | None:
    """``<run>`` for a checkpoint at ``<run>/checkpoints/<name>.pt``, else None (a release file)."""
    path = Path(checkpoint)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def results_dir(checkpoint: str | Path, config: Config) -> Path:
    """The run folder that holds ``checkpoint``, so a copied or moved run gets its own results; a
    file elsewhere (a release) writes to ``<run.out_dir>/<run.name>``."""
    return run_folder_of(checkpoint) or config.run_dir


def checkpoint_tag(checkpoint: str | Path) -> str:
    """``""`` for a run's final checkpoint (best.pt, last.pt), ``_<name>`` for a stage's (isr_best.pt)."""
    stem = Path(checkpoint).stem
    return "" if stem in ("best", "last") else f"_{stem}"


REPORT_FIGURES = (
    ("confusion matrix", "confusion_matrix.png"),
    ("ROC curves", "roc_curves.png"),
    ("reliability diagram", "reliability.png"),
    ("lesion precision-recall curves", "lesion_pr_curves.png"),
)


def use_dataset(
    config: Config, checkpoint: str | Path, name: str | None = None, root: str | None = None
) -> None:
    """Point ``config`` at dataset ``name`` under ``root`` (test.py --dataset/--data-root); a public
    dataset whose folder is not here (and not cached) stops with the flag to pass."""
    data = config.data
    if name and name != data.dataset:
        data.dataset, data.root = name, None
    if root:
        data.root = str(root)
    cache = cache_path(config)
    if data.dataset == "synthetic" or (cache / MANIFEST).is_file():
        built_from = (
            (read_settings(cache) or {}).get("root") if data.dataset != "synthetic" else None
        )
        if root and built_from and Path(built_from) != Path(root).expanduser().resolve():
            log.warning(
                "evaluating the cache %s, built from %s, not from --data-root %s (remove the cache to rebuild it from there)",
                cache,
                built_from,
                root,
            )
        validate(config)
        return
    if not data.root:
        raise DataError(
            f"{checkpoint} was not trained on {data.dataset}: pass --data-root PATH (your copy of {data.dataset})"
        )
    if not Path(data.root).expanduser().exists():
        where = (
            f"--data-root {data.root}"
            if root
            else f"{data.root}, the {data.dataset} folder recorded in {checkpoint},"
        )
        raise DataError(
            f"{where} does not exist here: pass --data-root PATH (your copy of {data.dataset})"
        )
    validate(config)


def run_test(
    checkpoint: str | Path,
    split: str = "test",
    device: str = "auto",
    samples: int = 4,
    figures_root: str | Path = "visualization_result",
    progress=None,
    mode: Mode | None = None,
    dataset: Dataset | None = None,
    dataset_name: str | None = None,
    data_root: str | None = None,
    tta: bool | None = None,
) -> tuple[dict, Path]:
    """Evaluate ``checkpoint`` on ``split``; writes metrics JSON, predictions CSV and figures.

    ``mode="lr"`` is the system (LR -> SR -> lesions -> grade); ``mode="hr"`` grades the HR
    images (the upper bound SR aims at); None takes the run's ``test.input`` (``hr`` for the
    ``hr_cls`` method, else ``lr``). The test split in that mode writes ``<run>/metrics.json``;
    other splits or modes get suffixed names (``metrics_val_hr.json``) so nothing is overwritten.
    ``dataset`` (already built for this config and split) saves rendering it again.
    ``dataset_name``/``data_root`` point the checkpoint at another copy of a dataset (a released
    checkpoint on the user's own IDRiD); a release writes under its own name (``runs/<release>``).
    Writes ``report.html`` (every table and figure in one file) next to the figures. ``tta``: flip
    test-time augmentation of the grade probabilities (engine/tta.py); None takes the run's
    ``test.tta``. Returns (metrics, run dir).
    """
    model, config, state = load_trained(checkpoint, device)
    use_dataset(config, checkpoint, dataset_name, data_root)
    if state.get("release"):
        config.run.name = state["release"]["name"]
    configure_threads(config.run.threads)
    mode = mode or config.test.input
    device_ = next(model.parameters()).device
    dataset = dataset if dataset is not None else build_dataset(config, split)
    loader = build_loader(
        dataset, max(8, config.train.joint.batch_size), False, 0, config.data.num_workers
    )
    tta = config.test.tta if tta is None else tta
    result = evaluate(model, loader, device_, mode, progress=progress, tta=tta)
    if mode == "lr":
        # The task-aware loss's signals (engine/mechanism.py): SR-vs-HR CAM agreement and the task gap.
        result.metrics["mechanism"] = mechanism_signals(
            model, loader, device_, config.model.cam_target
        )
    if (
        "grading" in result.metrics
    ):  # ECE, reliability, 95% intervals, operating points (evaluation/uncertainty.py)
        groups = load_groups(split_name(config.data.dataset, config.data.root))
        result.metrics.update(
            uncertainty_report(
                result.grades.numpy(),
                result.predicted.numpy(),
                result.probs.numpy(),
                [groups.get(i, i) for i in result.ids] if groups else None,
            )
        )
    metrics = {
        **result.metrics,
        "split": split,
        "input": mode,
        "tta": tta,
        "checkpoint": str(checkpoint),
        "method": config.method,
        "stage": state.get("stage"),
        "epoch": state.get("epoch"),
        "dataset": config.data.dataset,
        "hr_size": config.data.hr_size,
        "scale": config.data.scale,
    }
    run_dir = results_dir(checkpoint, config)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = metrics_file(
        run_dir, split, mode, config.test.input, checkpoint, tta, config.test.tta
    )
    suffix = metrics_path.stem.removeprefix("metrics")
    figures = Path(figures_root) / config.run.name / suffix.lstrip("_")
    metrics["report"] = str(figures / "report.html")
    metrics_path.write_text(json.dumps(_json_safe(metrics), indent=2))
    predictions = f"predictions_{split}{'_hr' if mode == 'hr' else ''}{tta_tag(tta, config.test.tta)}{checkpoint_tag(checkpoint)}.csv"
    write_predictions(result, run_dir / predictions)
    if "grading" in metrics:
        report.plot_confusion(metrics["grading"]["confusion"], figures / "confusion_matrix.png")
        report.plot_roc(
            roc_curves(result.grades.numpy(), result.probs.numpy()), figures / "roc_curves.png"
        )
        report.plot_reliability(metrics["calibration"]["reliability"], figures / "reliability.png")
    if result.seg is not None:
        report.plot_lesion_pr(result.seg.curves(), figures / "lesion_pr_curves.png")
    panels = sample_panels(model, dataset, device_, samples, figures / "samples", mode)
    drawn = [
        (title, figures / name) for title, name in REPORT_FIGURES if (figures / name).is_file()
    ]
    report.write_test_report(figures / "report.html", metrics, drawn, panels)
    return metrics, run_dir
