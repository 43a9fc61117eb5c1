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
``bench/predict_memory.py`` measures resident memory over 2,000 photographs). ``resume`` continues
an interrupted run in the same folder: photographs predictions.csv already lists with a final
status (:data:`FINAL_STATUSES`: every status but ``missing``, which is tried again) are not
graded again, new rows are appended, and report.html is rebuilt from the whole CSV. A resumed run
must grade like the first (same checkpoint, input, flips, quality rule: ``predict_run.json``).

Text cells of predictions.csv that a spreadsheet would run as a formula (starting with ``=``,
``+``, ``-``, ``@``, tab or carriage return; OWASP's "CSV injection") are written with a leading
``'``, which spreadsheets show as text; a cell that itself starts with ``'`` gets one too, so
:func:`restore_cell` (drop one leading ``'``) gives the original text back. report.html escapes
every file name (``html.escape``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from data.photo import MAX_PIXELS, PhotoDataset, PhotoInput
from data.records import GRADE_NAMES, LESIONS, DataError
from engine.onnx_inferer import DeployedModel, OnnxInferer
from evaluation.evidence import LESION_THRESHOLD, draw_panel, panel_title
from evaluation.referable import is_referable, model_threshold
from evaluation.report import PredictionReport

if TYPE_CHECKING:  # not imported to run: an exported file grades without the network classes
    from engine.config import Config
    from engine.evaluator import Mode
    from models import DeepMTDR

STATUSES = ("ok", "ungradable", "unreadable", "empty", "too_large", "missing")
# What --resume does not grade again: a photograph graded, or one whose file says it never will be.
# A missing file may yet arrive (a folder still being copied), so it is tried again.
FINAL_STATUSES = frozenset(STATUSES) - {"missing"}
# predictions.csv's text columns; the others hold numbers, which a spreadsheet never runs.
TEXT_COLUMNS = ("path", "reason", "flags", "grade_name", "panel", "sr")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
RUN_FILE = "predict_run.json"  # what a --resume must match
# What a predict_run.json written before a setting was recorded graded with.
DEFAULTS_BEFORE = {"temperature": 1.0, "referable_threshold": None}


def neutralise_cell(text: str) -> str:
    """``text`` as a spreadsheet shows it: a leading ``'`` before a formula start (= + - @ tab CR)
    or a ``'`` (so that the quote is reversible)."""
    return "'" + text if text.startswith((*FORMULA_STARTS, "'")) else text


def restore_cell(text: str) -> str:
    """The text :func:`neutralise_cell` was given."""
    return text[1:] if text.startswith("'") else text


def csv_columns(num_classes: int) -> list[str]:
    """predictions.csv's header (DESIGN.md section 8: path, status, grade, p0.., p_referable first)."""
    return [
        "path",
        "status",
        "grade",
        *[f"p{c}" for c in range(num_classes)],
        "p_referable",
        "referable",
        *[f"area_{name}" for name in LESIONS],
        "flags",
        "reason",
        "grade_name",
        "reference_grade",
        "luminance",
        "saturated",
        "sharpness",
        "fov_fraction",
        "fov_side",
        "width",
        "height",
        "seconds",
        "panel",
        "sr",
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


def _safe_stem(path: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:60] or "image"


def _fmt(value, spec: str = ".5f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return format(value, spec) if isinstance(value, float) else str(value)


class _Outputs:
    """predictions.csv (a row flushed per photograph), panels, thumbnails, SR images and the report."""

    def __init__(
        self,
        out: Path,
        num_classes: int,
        settings: PredictSettings,
        report: PredictionReport,
        kept: Path | None = None,
    ) -> None:
        """``kept``: a CSV of an earlier run's rows (same columns) that become the first rows here."""
        self.out, self.settings, self.num_classes = out, settings, num_classes
        self.columns = csv_columns(num_classes)
        self.report = report
        path = out / "predictions.csv"
        if kept is None:
            self.file = path.open("w", newline="", encoding="utf-8")
            self.writer = csv.DictWriter(self.file, self.columns)
            self.writer.writeheader()
        else:
            os.replace(kept, path)
            self.file = path.open("a", newline="", encoding="utf-8")
            self.writer = csv.DictWriter(self.file, self.columns)

    def write(self, item: dict, result: dict | None, row_index: int, extra_seconds: float) -> str:
        """Write everything of one photograph; returns its status."""
        started = time.perf_counter()
        quality = item.get("quality")
        flags = list(quality.flags) if quality is not None else []
        status, reason = item["status"], item["reason"]
        if status == "ok" and result is None:
            status, reason = "ungradable", "quality flags: " + ", ".join(flags)
        stem = f"{item['index'] + 1:05d}_{_safe_stem(item['path'])}"
        reference = item["reference_grade"] if item["reference_grade"] >= 0 else None
        row: dict = {
            "path": item["path"],
            "status": status,
            "reason": reason,
            "flags": ";".join(flags),
            "reference_grade": "" if reference is None else reference,
        }
        if quality is not None:
            row.update(
                luminance=_fmt(quality.luminance, ".2f"),
                saturated=_fmt(quality.saturated, ".4f"),
                sharpness=_fmt(quality.sharpness, ".3f"),
                fov_fraction=_fmt(quality.fov_fraction, ".4f"),
                fov_side=quality.fov_side,
                width=item["width"],
                height=item["height"],
            )
        thumbnail = None
        if "thumbnail" in item:
            thumbnail = f"thumbs/{stem}.jpg"
            Image.fromarray(item["thumbnail"]).save(self.out / thumbnail, quality=85)
        grade = probabilities = referable = areas = panel = None
        if result is not None:
            probabilities = result["probabilities"][row_index].tolist()
            grade = int(result["grades"][row_index])
            referable = float(result["p_referable"][row_index])
            row["referable"] = int(result["referable"][row_index])
            areas = result["areas"][row_index].tolist() if result["areas"].shape[1] else None
            row.update(
                grade=grade,
                grade_name=GRADE_NAMES[grade] if grade < len(GRADE_NAMES) else "",
                p_referable=_fmt(referable),
                **{f"p{c}": _fmt(p) for c, p in enumerate(probabilities)},
            )
            if areas is not None:
                row.update({f"area_{name}": _fmt(a, ".6f") for name, a in zip(LESIONS, areas)})
            image = result["image"][row_index]
            if self.settings.panels:
                panel = f"panels/{stem}.png"
                lesions = result["lesions"][row_index].numpy()
                draw_panel(
                    self.out / panel,
                    item["thumbnail"],
                    image.numpy(),
                    lesions if len(lesions) else np.zeros((4, *image.shape[-2:])),
                    result["cam"][row_index].numpy() if "cam" in result else None,
                    panel_title(
                        Path(item["path"]).name, grade, probabilities, referable, flags, reference
                    ),
                    lr=result["lr"][row_index].numpy() if "lr" in result else None,
                    lesion_areas=areas,
                    cam_grade=grade,
                )
                row["panel"] = panel
            if self.settings.save_sr and "lr" in result:
                row["sr"] = f"sr/{stem}.png"
                array = (image.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
                Image.fromarray(array).save(self.out / row["sr"], compress_level=3)
        row["seconds"] = _fmt(
            item.get("seconds", 0.0) + extra_seconds + time.perf_counter() - started, ".3f"
        )
        self.writer.writerow(
            {
                key: neutralise_cell(value)
                if key in TEXT_COLUMNS and isinstance(value, str)
                else value
                for key, value in row.items()
            }
        )
        self.file.flush()
        self.report.add(
            {
                "index": item["index"],
                "path": item["path"],
                "status": status,
                "reason": reason,
                "grade": grade,
                "probabilities": probabilities,
                "p_referable": referable,
                "flags": flags,
                "areas": areas,
                "reference_grade": reference,
                "thumbnail": thumbnail,
                "panel": panel,
            }
        )
        return status

    def close(self) -> Path:
        self.file.close()
        return self.report.close()


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


def _number(text: str | None, kind=float):
    """A CSV cell back as a number; None for an empty cell."""
    return kind(text) if text not in (None, "") else None


def _report_row(row: dict, index: int, out: Path, num_classes: int) -> dict:
    """PredictionReport's row for a predictions.csv row an earlier run wrote (``index``: its input position)."""
    path, panel = restore_cell(row["path"]), restore_cell(row["panel"]) or None
    grade = _number(row["grade"], int)
    probabilities = [float(row[f"p{c}"]) for c in range(num_classes)] if grade is not None else None
    areas = [_number(row[f"area_{name}"]) for name in LESIONS]
    thumbnail = f"thumbs/{index + 1:05d}_{_safe_stem(path)}.jpg"
    if not (out / thumbnail).is_file():
        thumbnail = f"thumbs/{Path(panel).stem}.jpg" if panel else None
        thumbnail = thumbnail if thumbnail and (out / thumbnail).is_file() else None
    flags = restore_cell(row["flags"])
    return {
        "index": index,
        "path": path,
        "status": row["status"],
        "reason": restore_cell(row["reason"]),
        "grade": grade,
        "probabilities": probabilities,
        "p_referable": _number(row["p_referable"]),
        "flags": flags.split(";") if flags else [],
        "areas": areas if all(area is not None for area in areas) else None,
        "reference_grade": _number(row["reference_grade"], int),
        "thumbnail": thumbnail,
        "panel": panel,
    }


def _check_run_file(out: Path, identity: dict) -> None:
    """Refuse to resume with other weights or settings than the first run's (``predict_run.json``;
    a folder an older predict.py wrote has none, and is resumed as it is)."""
    path = out / RUN_FILE
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"cannot --resume: {path} is not readable ({error}); grade into a new --out"
        ) from None
    changed = [
        f"{key} {before.get(key)!r} -> {value!r}"
        for key, value in identity.items()
        if before.get(key, DEFAULTS_BEFORE.get(key)) != value
    ]
    if changed:
        raise DataError(
            f"cannot --resume in {out}: its predictions were made with other settings ({'; '.join(changed)}); "
            "use the first run's or a new --out"
        )


def _write_run_file(out: Path, identity: dict) -> None:
    temp = out / f".{RUN_FILE}.tmp"
    temp.write_text(json.dumps(identity, indent=2) + "\n", encoding="utf-8")
    os.replace(temp, out / RUN_FILE)


def _ends_a_line(path: Path) -> bool:
    """Whether ``path`` is empty or ends with a line end: its last CSV row was written whole."""
    with path.open("rb") as file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            return True
        file.seek(size - 1)
        return file.read(1) == b"\n"


def _earlier_rows(
    out: Path,
    columns: list[str],
    photos: Sequence[PhotoInput],
    report: PredictionReport,
    num_classes: int,
    summary: Summary,
) -> tuple[Path, set[int]]:
    """Read an earlier run's predictions.csv, streamed (memory holds input paths and positions only).

    Its rows with a final status go to a fresh CSV (returned: it becomes predictions.csv) and to
    ``report``, and count in ``summary``; returns that CSV and the input positions its rows cover.
    Left out: a last row that a kill cut short (no line end) and rows of photographs to grade again."""
    source = out / "predictions.csv"
    positions: dict[str, deque[int]] = defaultdict(deque)
    for index, photo in enumerate(photos):
        positions[str(photo.path)].append(index)
    whole = _ends_a_line(source)
    done: set[int] = set()
    kept_path = out / ".predictions.csv.resume.tmp"
    extra = len(photos)  # report positions for rows of photographs not among this run's inputs
    try:
        with (
            source.open(newline="", encoding="utf-8") as file,
            kept_path.open("w", newline="", encoding="utf-8") as kept,
        ):
            reader = csv.reader(file)
            header = next(reader, None)
            if header is not None and header != columns:
                raise DataError(
                    f"cannot --resume: {source} has other columns than this model writes (another model or version); "
                    "grade into a new --out"
                )
            writer = csv.DictWriter(kept, columns)
            writer.writeheader()
            row = next(reader, None)
            while row is not None:
                following = next(reader, None)
                if following is None and not whole:
                    break  # the last row, cut short by a kill
                if len(row) == len(columns) and row[1] in STATUSES:
                    cells = dict(zip(columns, row))
                    waiting = positions.get(restore_cell(cells["path"]))
                    if cells["status"] in FINAL_STATUSES or not waiting:
                        index = waiting[0] if waiting else extra
                        try:
                            report_row = _report_row(cells, index, out, num_classes)
                        except (ValueError, IndexError):
                            report_row = None  # a damaged row: its photograph is graded again
                        if report_row is not None:
                            if waiting:
                                done.add(waiting.popleft())
                                summary.counts[cells["status"]] = (
                                    summary.counts.get(cells["status"], 0) + 1
                                )
                            else:  # a photograph not among this run's inputs: its row stays as it was
                                extra += 1
                            writer.writerow(cells)
                            report.add(report_row)
                row = following
    except (UnicodeDecodeError, csv.Error) as error:
        kept_path.unlink(missing_ok=True)
        raise DataError(
            f"cannot --resume: {source} is not a readable predictions.csv ({error}); grade into a new --out"
        ) from None
    except BaseException:
        kept_path.unlink(missing_ok=True)
        raise
    return kept_path, done


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
    size = (
        f"LR {config.data.hr_size // config.data.scale} px -> SR {config.data.hr_size} px"
        if mode == "lr"
        else f"HR {config.data.hr_size} px"
    )
    facts = [
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
    identity = {
        "checkpoint_sha256": settings.checkpoint_sha256,
        "input": mode,
        "tta": settings.tta,
        "ignore_quality": settings.ignore_quality,
        "hr_size": config.data.hr_size,
        "num_classes": config.data.num_classes,
        "temperature": settings.temperature,
        "referable_threshold": settings.referable_threshold,
    }
    resuming = settings.resume and (out / "predictions.csv").is_file()
    if resuming:
        _check_run_file(out, identity)
    summary = Summary(total=len(photos))
    remaining = kept = None
    report = PredictionReport(
        out / "report.html", "DeepMT-DR predictions", facts, settings.referable_threshold
    )
    if resuming:
        try:
            kept, done = _earlier_rows(
                out,
                csv_columns(config.data.num_classes),
                photos,
                report,
                config.data.num_classes,
                summary,
            )
        except BaseException:
            report.body.close()
            report.body_path.unlink(missing_ok=True)
            raise
        remaining = [index for index in range(len(photos)) if index not in done]
        summary.resumed = len(done)
        if on_progress is not None and done:
            on_progress(len(done))
    _write_run_file(out, identity)
    outputs = _Outputs(out, config.data.num_classes, settings, report, kept)
    dataset = PhotoDataset(photos, config.data.hr_size, settings.max_pixels)
    try:
        for items in prepared_batches(dataset, settings.batch_size, settings.workers, remaining):
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
            if on_progress is not None:
                on_progress(len(items))
    finally:
        summary.report = outputs.close()
    summary.csv = out / "predictions.csv"
    summary.seconds = time.perf_counter() - started
    return summary
