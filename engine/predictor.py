"""Grade photographs (``predict.py``): decoded and FOV-cropped in loader workers, graded in batches,
written as each batch finishes (CSV row, evidence panel, thumbnail, report row), so memory stays
flat however many photographs a folder holds.

Per photograph: ``data.photo`` decodes it (in ``workers`` threads: PIL and OpenCV release the
GIL while they decode and resize, and threads, unlike forked loader processes, cannot inherit a
lock that an OpenCV or OpenMP thread of the caller held at fork time, a hang seen in testing) and makes the HR-size FOV square with the training
cache's own code; ``data.quality`` flags it; the batch is degraded to the model's LR input with
``data.degrade`` (as in training) and run LR -> SR -> lesions -> grade (``input="hr"``: the HR
square is graded directly); Grad-CAM of the predicted grade comes from the same grader pass
(``models.cam.gradcam_in_forward``). ``tta``: the four flips of the input (``engine/tta.py``, as
test.py --tta), probabilities and lesion maps averaged. The grade is the model's decoding of the
probabilities (argmax, or the expected grade cut at the thresholds saved with it).

Nothing is kept per photograph once its batch is written (no results, panels or thumbnails held:
``bench/predict_memory.py`` measures resident memory over 2,000 photographs). What is written per
photograph, and predictions.csv's columns and cells: ``engine/predict_outputs.py``. ``resume``
continues an interrupted run in the same folder: ``engine/predict_resume.py``. Both modules' public
names are re-exported here.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from data.photo import MAX_PIXELS, PhotoDataset, PhotoInput
from data.records import DataError
from engine.onnx_inferer import DeployedModel, OnnxInferer
from engine.predict_outputs import (
    FINAL_STATUSES,
    FORMULA_STARTS,
    STATUSES,
    TEXT_COLUMNS,
    PredictionOutputs,
    csv_columns,
    neutralise_cell,
    restore_cell,
)
from engine.predict_resume import (
    DEFAULTS_BEFORE,
    RUN_FILE,
    check_run_file,
    earlier_rows,
    write_run_file,
)
from engine.predict_summary import reference_summary, summary_facts
from evaluation.evidence import LESION_THRESHOLD
from evaluation.html_report import PredictionReport
from evaluation.referable import is_referable, model_threshold

if TYPE_CHECKING:  # not imported to run: an exported file grades without the network classes
    from engine.config import Config
    from engine.evaluator import Mode
    from models import DeepMTDR

__all__ = [
    "DEFAULTS_BEFORE",
    "FINAL_STATUSES",
    "FORMULA_STARTS",
    "RUN_FILE",
    "STATUSES",
    "TEXT_COLUMNS",
    "BatchGrader",
    "PredictSettings",
    "Summary",
    "check_writable",
    "csv_columns",
    "neutralise_cell",
    "predict",
    "prepared_batches",
    "restore_cell",
]


@dataclass
class PredictSettings:
    """How to grade: where to write, what to grade from, and the speed switches."""

    out: Path
    input: Mode | None = None  # None: the checkpoint's test.input
    batch_size: int = 8
    tta: bool = False
    amp: str = "auto"  # auto (bf16 where the hardware has it), on, off
    panels: bool = True
    save_sr: bool = False
    workers: int = 2  # decoding threads; 0: decode in the calling thread
    max_pixels: int = MAX_PIXELS
    ignore_quality: bool = False  # grade flagged photographs too (their flags stay in the CSV)
    resume: bool = (
        False  # skip the photographs predictions.csv in ``out`` already lists (final status)
    )
    checkpoint_sha256: str | None = (
        None  # recorded in predict_run.json; a resume must grade with the same weights
    )
    temperature: float = 1.0  # a release's calibration (engine/inference.py)
    referable_threshold: float | None = None  # a release's referral threshold; None: 0.5


@dataclass
class Summary:
    total: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    csv: Path | None = None
    report: Path | None = None
    seconds: float = 0.0
    resumed: int = 0  # inputs an earlier run had already written (--resume)
    reference: dict | None = (
        None  # scored against the inputs' reference grades (predict_summary.py)
    )

    @property
    def graded(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def exit_code(self) -> int:
        """0 when every input was graded, 3 when some were not (their rows say why)."""
        return 0 if self.graded == self.total else 3


class BatchGrader:
    """predict.py's face of the one inferer (engine/inference.py): HR squares ``[N,3,S,S]`` uint8
    and their FOV -> probabilities, grades, referral, lesion maps and areas inside the FOV, the SR
    image and Grad-CAM; one host copy per batch. ``model`` may be an exported file
    (:class:`engine.onnx_inferer.DeployedModel`): graded by its :class:`OnnxInferer`, in float32
    (``amp`` does not apply), without Grad-CAM."""

    def __init__(
        self,
        model: DeepMTDR | DeployedModel,
        config: Config,
        mode: Mode,
        tta: bool = False,
        amp: str = "auto",
        temperature: float = 1.0,
        referable_threshold: float | None = None,
    ) -> None:
        if isinstance(model, DeployedModel):
            self.model = model
            self.inferer = OnnxInferer(model, mode, tta=tta, temperature=temperature)
        else:
            from engine.inference import Inferer

            # Grad-CAM differentiates after the grader's last stage only: no parameter needs a gradient.
            self.model = model.eval().requires_grad_(False)
            self.inferer = Inferer(
                self.model,
                config,
                mode,
                tta=tta,
                amp={"auto": "auto", "on": True, "off": False}[amp],
                temperature=temperature,
            )
        self.speed, self.device = self.inferer.speed, self.inferer.device
        self.referable_threshold = referable_threshold

    @torch.no_grad()
    def __call__(self, hr: torch.Tensor, fov: torch.Tensor) -> dict[str, torch.Tensor]:
        result = self.inferer(hr=hr, cam=True)
        inside = fov.to(self.device).float()
        lesions = result.lesions * inside  # outside the field of view there is nothing to find
        areas = (lesions >= LESION_THRESHOLD).float().sum((2, 3)) / inside.sum((2, 3)).clamp_min(1)
        out = {
            "probabilities": result.probabilities,
            "grades": result.grades,
            "p_referable": result.p_referable,
            "referable": is_referable(result.p_referable, self.referable_threshold),
            "lesions": lesions,
            "areas": areas,
            "image": result.image.clamp(0, 1),
        }
        if result.cam is not None:  # an exported file gives none
            out["cam"] = result.cam
        if result.lr is not None:
            out["lr"] = result.lr
        return {key: value.cpu() for key, value in out.items()}


def prepared_batches(
    dataset: PhotoDataset, batch_size: int, workers: int, indices: Sequence[int] | None = None
) -> Iterator[list[dict]]:
    """The dataset's items in order (those of ``indices`` only, if given), ``batch_size`` at a time,
    prepared ``workers`` at a time in threads while the caller grades the previous batch (at most
    two batches ahead)."""
    order = range(len(dataset)) if indices is None else indices
    if workers == 0:
        for start in range(0, len(order), batch_size):
            yield [dataset[index] for index in order[start : start + batch_size]]
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        pending: deque = deque()
        submitted = 0
        while submitted < len(order) or pending:
            while submitted < len(order) and len(pending) < 2 * batch_size:
                pending.append(pool.submit(dataset.__getitem__, order[submitted]))
                submitted += 1
            count = min(batch_size, len(pending))
            yield [pending.popleft().result() for _ in range(count)]


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written there, before any work (a usage error otherwise)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise DataError(
            f"--out {out} is not a writable folder: {error.strerror or error}"
        ) from None


def _report_facts(
    facts: Sequence[tuple[str, object]],
    config: Config,
    mode: Mode,
    settings: PredictSettings,
    grader: BatchGrader,
    model: DeepMTDR | DeployedModel,
) -> list[tuple[str, object]]:
    """report.html's facts: the caller's, then how the photographs are graded."""
    size = (
        f"LR {config.data.hr_size // config.data.scale} px -> SR {config.data.hr_size} px"
        if mode == "lr"
        else f"HR {config.data.hr_size} px"
    )
    return [
        *facts,
        ("graded", f"FOV square {size}"),
        ("test-time augmentation", "4 flips" if settings.tta else "off"),
        ("precision", grader.inferer.precision),
        (
            "referable DR",
            f"p(grade >= 2) >= {model_threshold({'referable_threshold': settings.referable_threshold}):.3f}"
            + (" (fixed at release)" if settings.referable_threshold is not None else " (default)"),
        ),
        *(
            [("calibration", f"temperature {settings.temperature:.3f}")]
            if settings.temperature != 1.0
            else []
        ),
        ("device", str(grader.device)),
        *([("runtime", model.runtime)] if isinstance(model, DeployedModel) else []),
    ]


def _run_identity(settings: PredictSettings, mode: Mode, config: Config) -> dict:
    """What a ``--resume`` must grade with (``predict_run.json``)."""
    return {
        "checkpoint_sha256": settings.checkpoint_sha256,
        "input": mode,
        "tta": settings.tta,
        "ignore_quality": settings.ignore_quality,
        "hr_size": config.data.hr_size,
        "num_classes": config.data.num_classes,
        "temperature": settings.temperature,
        "referable_threshold": settings.referable_threshold,
    }


def _resume(
    out: Path,
    num_classes: int,
    photos: Sequence[PhotoInput],
    report: PredictionReport,
    summary: Summary,
    on_progress: Callable[[int], object] | None,
) -> tuple[Path, list[int]]:
    """Take over an earlier run's rows; returns their CSV and the input positions left to grade."""
    try:
        kept, done = earlier_rows(
            out, csv_columns(num_classes), photos, report, num_classes, summary.counts
        )
    except BaseException:
        report.body.close()
        report.body_path.unlink(missing_ok=True)
        raise
    summary.resumed = len(done)
    if on_progress is not None and done:
        on_progress(len(done))
    return kept, [index for index in range(len(photos)) if index not in done]


def _grade_batch(
    items: list[dict],
    grader: BatchGrader,
    settings: PredictSettings,
    outputs: PredictionOutputs,
    summary: Summary,
) -> None:
    """Grade the gradable photographs of one batch and write every photograph of it."""
    batch_started = time.perf_counter()
    gradable = [
        item
        for item in items
        if item["status"] == "ok"
        and item.get("hr") is not None
        and (settings.ignore_quality or item["quality"].gradable)
    ]
    result = None
    if gradable:
        result = grader(
            torch.stack([item["hr"] for item in gradable]),
            torch.stack([item["fov"] for item in gradable]),
        )
    share = (time.perf_counter() - batch_started) / max(len(gradable), 1)
    positions = {id(item): position for position, item in enumerate(gradable)}
    for item in items:
        position = positions.get(id(item))
        status = outputs.write(
            item,
            result if position is not None else None,
            position or 0,
            share if position is not None else 0.0,
        )
        summary.counts[status] = summary.counts.get(status, 0) + 1


def predict(
    model: DeepMTDR | DeployedModel,
    config: Config,
    photos: Sequence[PhotoInput],
    settings: PredictSettings,
    facts: Sequence[tuple[str, object]] = (),
    on_progress: Callable[[int], object] | None = None,
) -> Summary:
    """Grade ``photos`` into ``settings.out``: predictions.csv (input order), report.html, panels."""
    started = time.perf_counter()
    out = Path(settings.out)
    check_writable(out)
    for folder in (
        "thumbs",
        *(["panels"] if settings.panels else []),
        *(["sr"] if settings.save_sr else []),
    ):
        (out / folder).mkdir(exist_ok=True)
    mode = settings.input or config.test.input
    grader = BatchGrader(
        model,
        config,
        mode,
        settings.tta,
        settings.amp,
        settings.temperature,
        settings.referable_threshold,
    )
    facts = _report_facts(facts, config, mode, settings, grader, model)
    identity = _run_identity(settings, mode, config)
    resuming = settings.resume and (out / "predictions.csv").is_file()
    if resuming:
        check_run_file(out, identity)
    summary = Summary(total=len(photos))
    remaining = kept = None
    report = PredictionReport(
        out / "report.html", "DeepMT-DR predictions", facts, settings.referable_threshold
    )
    if resuming:
        kept, remaining = _resume(
            out, config.data.num_classes, photos, report, summary, on_progress
        )
    write_run_file(out, identity)
    outputs = PredictionOutputs(out, config.data.num_classes, settings, report, kept)
    dataset = PhotoDataset(photos, config.data.hr_size, settings.max_pixels)
    try:
        for items in prepared_batches(dataset, settings.batch_size, settings.workers, remaining):
            _grade_batch(items, grader, settings, outputs, summary)
            if on_progress is not None:
                on_progress(len(items))
        outputs.file.close()  # every row written: score the run against its reference grades
        summary.reference = reference_summary(out, settings.referable_threshold)
        if summary.reference is not None:
            report.facts.extend(summary_facts(summary.reference))
    finally:
        summary.report = outputs.close()
    summary.csv = out / "predictions.csv"
    summary.seconds = time.perf_counter() - started
    return summary
