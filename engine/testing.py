"""Evaluate a trained checkpoint on a split: metrics.json, predictions CSV and figures.

Loading the checkpoint is ``engine/loading.py``'s, the result files' names ``engine/output_names.py``'s
(both re-exported here, as is ``models.adapters.GraderOnImage``, for the callers of old).
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from torch.utils.data import Dataset

from data.cache import MANIFEST, read_settings
from data.degrade import bicubic_upsample
from data.records import DataError
from data.splits import load_groups, split_name
from engine.builders import build_dataset, build_loader, cache_path
from engine.config import Config, validate
from engine.evaluator import EvalResult, Mode, evaluate
from engine.inference import Inferer, release_calibration
from engine.loading import checkpoint_config, load_trained
from engine.mechanism import mechanism_signals
from engine.output_names import (
    checkpoint_tag,
    figures_dir,
    metrics_file,
    predictions_file,
    results_dir,
    run_folder_of,
    tta_tag,
)
from engine.runtime import configure_threads
from evaluation import report
from evaluation.formatting import json_safe
from evaluation.metrics import roc_curves
from evaluation.prediction_csv import TEST_COLUMNS
from evaluation.referable import (
    REFERABLE_GRADE,
    is_referable,
    model_threshold,
    referable_probability,
)
from evaluation.uncertainty import uncertainty_report
from models.adapters import GraderOnImage

# Re-exported: engine/export.py, predict.py, scripts and tests import these from here.
__all__ = [
    "GraderOnImage",
    "checkpoint_config",
    "checkpoint_tag",
    "load_trained",
    "metrics_file",
    "results_dir",
    "run_folder_of",
    "run_test",
    "sample_panels",
    "tta_tag",
    "use_dataset",
    "write_predictions",
]

log = logging.getLogger(__name__)


def write_predictions(
    result: EvalResult, path: Path, referable_threshold: float | None = None
) -> None:
    """test.py's per-image CSV of a split: ``id``, ``grade`` (the reference; -1 unknown),
    ``predicted``, ``p0``.., ``p_referable`` and ``referable`` (the decision, 0 or 1) by the one
    rule (evaluation/referable.py). predict.py's per-photograph CSV names the model's grade
    ``grade`` and the reference ``reference_grade``; evaluation/prediction_csv.py reads both."""
    path.parent.mkdir(parents=True, exist_ok=True)
    classes = result.probs.shape[1]
    with_referable = classes > REFERABLE_GRADE
    score = referable_probability(result.probs) if with_referable else None
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        referable_columns = ["p_referable", "referable"] if with_referable else []
        writer.writerow([*TEST_COLUMNS, *[f"p{c}" for c in range(classes)], *referable_columns])
        for index, (sample_id, grade, predicted, probs) in enumerate(
            zip(
                result.ids, result.grades.tolist(), result.predicted.tolist(), result.probs.tolist()
            )
        ):
            extra = []
            if with_referable:
                p = float(score[index])
                extra = [f"{p:.5f}", int(is_referable(p, referable_threshold))]
            writer.writerow([sample_id, grade, predicted, *[f"{p:.5f}" for p in probs], *extra])


def sample_panels(
    inferer: Inferer, dataset, count: int, out_dir: Path, mode: Mode = "lr"
) -> list[Path]:
    """LR, bicubic, SR, HR, lesion maps vs ground truth and Grad-CAM for the first ``count`` samples.

    Lesion maps, grade and Grad-CAM (last grader stage, of the decoded grade) come from ``inferer``
    (the evaluation's own) on the image graded in ``mode``: SR or HR.
    """
    if count <= 0:
        return []
    batch = next(iter(build_loader(dataset, min(count, len(dataset)), False, 0)))
    lr, hr = batch["lr"], batch["hr"]
    result = inferer(hr, lr if mode == "lr" else None, cam=True)
    sr = inferer.model.isr(lr.to(inferer.device)) if mode == "hr" else result.image
    bicubic = bicubic_upsample(lr, inferer.model.isr.scale)
    paths = []
    for i, sample_id in enumerate(batch["id"]):
        grade = int(result.grades[i])
        title = f"{sample_id}: grade {int(batch['grade'][i])}, predicted {grade} (p={float(result.probabilities[i, grade]):.2f})"
        paths.append(
            report.plot_sample_panel(
                out_dir / f"sample_{sample_id}.png",
                lr[i],
                bicubic[i],
                sr[i].detach().float().cpu(),
                hr[i],
                result.lesions[i].cpu(),
                batch["masks"][i],
                cam=result.cam[i][None].cpu(),
                title=title,
                lesion_valid=batch["mask_valid"][i].tolist(),
            )
        )
    return paths


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
    amp: str | bool | None = None,
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
    ``test.tta``. ``amp``: the precision (``"auto"``, True, False; None: the checkpoint's ``run.amp``,
    the policy predict.py follows too). Returns (metrics, run dir).
    """
    model, config, state = load_trained(checkpoint, device)
    use_dataset(config, checkpoint, dataset_name, data_root)
    configure_threads(config.run.threads)
    mode = mode or config.test.input
    tta = config.test.tta if tta is None else tta
    dataset = dataset if dataset is not None else build_dataset(config, split)
    temperature, referable_threshold = release_calibration(state)
    inferer = Inferer(model, config, mode, tta=tta, amp=amp, temperature=temperature)
    result = _evaluate(inferer, config, dataset, progress, tta, (temperature, referable_threshold))
    metrics = {
        **result.metrics,
        "split": split,
        "input": mode,
        "tta": tta,
        "precision": inferer.precision,
        "temperature": temperature,
        "referable_rule": f"p(grade >= 2) >= {model_threshold({'referable_threshold': referable_threshold}):g}",
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
    test_input, test_tta = config.test.input, config.test.tta
    metrics_path = metrics_file(run_dir, split, mode, test_input, checkpoint, tta, test_tta)
    figures = figures_dir(figures_root, config.run.name, metrics_path)
    metrics["report"] = str(figures / "report.html")
    metrics_path.write_text(json.dumps(json_safe(metrics), indent=2))
    write_predictions(
        result,
        predictions_file(run_dir, split, mode, checkpoint, tta, test_tta),
        referable_threshold,
    )
    panels = sample_panels(inferer, dataset, samples, figures / "samples", mode)
    _write_figures(result, metrics, figures, panels)
    return metrics, run_dir


def _evaluate(
    inferer: Inferer,
    config: Config,
    dataset: Dataset,
    progress,
    tta: bool,
    calibration: tuple,
) -> EvalResult:
    """``inferer``'s evaluation of ``dataset``, with the task-aware loss's signals (LR input) and the
    grading's intervals, calibration and operating points; ``calibration``: the release's
    (temperature, referable threshold)."""
    model, mode = inferer.model, inferer.mode
    device = next(model.parameters()).device
    temperature, referable_threshold = calibration
    loader = build_loader(
        dataset, max(8, config.train.joint.batch_size), False, 0, config.data.num_workers
    )
    result = evaluate(
        model,
        loader,
        device,
        mode,
        inferer.autocast,
        progress,
        tta=tta,
        temperature=temperature,
        referable_threshold=referable_threshold,
        seg_tile=inferer.seg_tile,
    )
    if mode == "lr":
        # The task-aware loss's signals (engine/mechanism.py): SR-vs-HR CAM agreement and the task gap.
        result.metrics["mechanism"] = mechanism_signals(
            model, loader, device, config.model.cam_target
        )
    if "grading" in result.metrics:  # ECE, reliability, 95% intervals, operating points
        groups = load_groups(split_name(config.data.dataset, config.data.root))
        result.metrics.update(
            uncertainty_report(
                result.grades.numpy(),
                result.predicted.numpy(),
                result.probs.numpy(),
                [groups.get(i, i) for i in result.ids] if groups else None,
                referable_threshold,
            )
        )
    return result


def _write_figures(result: EvalResult, metrics: dict, figures: Path, panels: list[Path]) -> None:
    """The confusion matrix, ROC, reliability and lesion PR figures, then report.html with them
    and the per-sample ``panels``."""
    if "grading" in metrics:
        report.plot_confusion(metrics["grading"]["confusion"], figures / "confusion_matrix.png")
        report.plot_roc(
            roc_curves(result.grades.numpy(), result.probs.numpy()), figures / "roc_curves.png"
        )
        report.plot_reliability(metrics["calibration"]["reliability"], figures / "reliability.png")
    if result.seg is not None:
        report.plot_lesion_pr(result.seg.curves(), figures / "lesion_pr_curves.png")
    drawn = [
        (title, figures / name) for title, name in REPORT_FIGURES if (figures / name).is_file()
    ]
    report.write_test_report(figures / "report.html", metrics, drawn, panels)
