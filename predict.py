"""Grade fundus photographs with released (or your own) DeepMT-DR weights.

    python predict.py --demo                               # four built-in photographs, ten seconds
    python predict.py photos/ more.jpg list.csv --out graded
    python predict.py photos/ --checkpoint deepmt_dr_idrid_1024   # the release at LR 256 -> HR 1024
    python predict.py photos/ --checkpoint runs/mine --input hr --tta

PATHS are image files (JPEG, PNG, TIFF, BMP; any size, 8 or 16 bits, grey, RGBA, palette, CMYK,
EXIF-rotated), folders (searched recursively) or CSV lists (a ``path`` column, optional ``grade``
as a reference). Each photograph is cropped to its field of view exactly as the training data
was, brought to the model's input size and graded LR -> SR -> lesions -> grade (``--input hr``:
the HR image directly). Writes, in --out:

    predictions.csv   one row per input, in input order, written as it goes: path, status, grade,
                      p0..p4, p_referable (grade >= 2), lesion areas (fraction of the FOV),
                      quality flags and measures, seconds
    report.html       sortable table with thumbnails, grades, referable probability, flags, and
                      links to the panels; one file, no network, readable without JavaScript
    panels/           per photograph: input, SR, lesion maps, Grad-CAM of the predicted grade
    sr/               with --save-sr, the SR image at the model's full resolution
    predict_run.json  the checkpoint's SHA-256 and the settings a --resume must match

--resume continues an interrupted run into the same --out: photographs predictions.csv already
lists are not graded again (status ok or a final error: every status but missing, which is tried
again), new rows are appended after the earlier ones, and report.html is rebuilt from the whole
CSV. Memory stays flat however many photographs a folder holds (nothing is kept per photograph).

Spreadsheet safety: a text cell of predictions.csv (path, reason, flags, grade_name, panel, sr)
that starts with = + - @ tab or carriage return, which a spreadsheet would run as a formula, is
written with a leading single quote (OWASP's advice on CSV injection), as is one that starts with
a quote; drop that one leading quote to get the text back. report.html escapes file names.

Photographs with quality flags (no field of view, too dark, overexposed, blurred, field of view
too small; thresholds in data/quality.py) are listed as ``ungradable`` and not graded; files
that cannot be read are listed with the reason. Exit codes: 0 every input graded, 3 some were
not (see their status), 2 a usage error (no such checkpoint, an unwritable --out) before any work.
--checkpoint takes a release name (pretrained_model/RELEASES.json, hash-checked), a checkpoint
file (.pt, or a safetensors release's .safetensors with its .json sidecar) or a run folder, or an
exported network (``python -m engine.export ... --out NAME.onnx`` / ``NAME.pt2``): an .onnx file
runs in ONNX Runtime on the CPU, in float32, without Grad-CAM (panels have no Grad-CAM tile) and
without importing the network classes (engine/onnx_inferer.py); LR input only. Research use only:
not for clinical decisions.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from data.cache import file_sha256
from data.photo import MAX_PIXELS, list_inputs, write_demo_photos
from data.records import DataError
from engine.cli import run_cli
from engine.inference_core import release_calibration
from engine.onnx_inferer import is_deployment_file, load_deployed
from engine.predictor import PredictSettings, check_writable, predict
from engine.runtime import configure_threads

# engine.release and engine.testing are imported when a checkpoint is loaded (not for an exported
# file: they import the network classes). The default release is engine.release.DEFAULT_RELEASE.
DEFAULT_CHECKPOINT = "the default release, deepmt_dr_idrid_small"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "paths", nargs="*", metavar="PATHS", help="image files, folders or CSV lists"
    )
    parser.add_argument(
        "--checkpoint",
        help="release name, checkpoint file, run folder, or exported .onnx / .pt2 file "
        f"(default: {DEFAULT_CHECKPOINT})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default predictions, or predictions/demo with --demo)",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="grade skimage's retina photograph and three embedded-dataset renders",
    )
    parser.add_argument(
        "--input",
        choices=("lr", "hr"),
        help="lr: LR -> SR -> grade (the system); hr: grade the HR image; default: the checkpoint's",
    )
    parser.add_argument(
        "--device", default="auto", help="cuda, cpu, mps, cuda:1 ... (default: auto)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--tta",
        action="store_true",
        help="average over the four flips of each photograph: about 4x the network time; off by default "
        "for speed, even for a release whose test.tta is on (test.py follows that)",
    )
    parser.add_argument(
        "--amp",
        nargs="?",
        const="on",
        default="auto",
        choices=("auto", "on", "off"),
        help="bf16/fp16 autocast: auto (where the hardware has it, the default), on (--amp), off",
    )
    parser.add_argument(
        "--save-sr", action="store_true", help="also write each SR image at full resolution (sr/)"
    )
    parser.add_argument(
        "--no-panels", action="store_true", help="skip the per-photograph evidence panels"
    )
    parser.add_argument(
        "--ignore-quality",
        action="store_true",
        help="grade photographs with quality flags too (flags stay in the CSV)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="decoding threads, ahead of grading (0: decode in turn)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"refuse images with more pixels (default {MAX_PIXELS})",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run into the same --out: skip photographs predictions.csv already lists "
        "(status ok or a final error), append the rest, rebuild report.html from the whole CSV",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def load_model(name_or_path: str | None, device: str):
    """``(model, config, release facts, (temperature, referable threshold), file)`` of --checkpoint.

    An exported ``.onnx`` / ``.pt2`` file is loaded by engine/onnx_inferer.py (the model is its
    ``DeployedModel``, the config the parts of one its metadata gives; CPU, ``torch``'s thread
    count); anything else is found by ``engine.release.resolve_checkpoint`` and rebuilt by
    ``engine.testing.load_trained``."""
    if name_or_path is not None and is_deployment_file(name_or_path):
        if device not in ("auto", "cpu"):
            print(f"note: an exported file runs on the CPU: --device {device} does not apply")
        deployed = load_deployed(name_or_path, threads=torch.get_num_threads())
        meta = deployed.metadata
        release = {
            "data": {"terms": meta["dataset"]},
            "commit": meta["release_commit"] or meta["commit"],
            "exported_from": f"{meta['source']} (SHA-256 {meta['source_sha256']})",
        }
        calibration = (meta["temperature"] or 1.0, meta["referable_threshold"])
        return deployed, deployed.config, release, calibration, deployed.path
    from engine.release import DEFAULT_RELEASE, resolve_checkpoint
    from engine.testing import load_trained

    checkpoint = resolve_checkpoint(name_or_path or DEFAULT_RELEASE)
    model, config, state = load_trained(checkpoint, device)
    return model, config, state.get("release") or {}, release_calibration(state), checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = get_args_parser()
    args = parser.parse_intermixed_args(argv)  # PATHS may come before or after the options
    if args.demo == bool(args.paths):
        parser.error("give PATHS to grade, or --demo (not both)")
    if args.batch_size < 1 or args.workers < 0 or args.max_pixels < 1:
        parser.error("--batch-size and --max-pixels must be positive, --workers >= 0")
    configure_threads(0)
    model, config, release, calibration, checkpoint = load_model(args.checkpoint, args.device)
    if args.input == "hr" and is_deployment_file(checkpoint):
        raise DataError(
            f"{checkpoint} runs LR -> SR -> lesions -> grade: --input hr needs the checkpoint (.pt)"
        )
    out = args.out or Path("predictions/demo" if args.demo else "predictions")
    check_writable(out)
    if args.demo:
        photos = write_demo_photos(out / "inputs")
    else:
        inputs = list_inputs(args.paths)
        if inputs.ignored:
            print(
                f"ignored {len(inputs.ignored)} file(s) without an image extension in the folders given"
            )
        if not inputs.photos:
            raise DataError(f"no images in {' '.join(args.paths)}")
        photos = inputs.photos
    digest = file_sha256(checkpoint)
    facts = [
        ("checkpoint", checkpoint),
        ("SHA-256", digest),
        *([("exported from", release["exported_from"])] if "exported_from" in release else []),
        ("trained on", (release.get("data") or {}).get("terms") or config.data.dataset),
        ("commit", release.get("commit")),
    ]
    settings = PredictSettings(
        out,
        args.input,
        args.batch_size,
        args.tta,
        args.amp,
        not args.no_panels,
        args.save_sr,
        args.workers,
        args.max_pixels,
        args.ignore_quality,
        args.resume,
        digest,
        *calibration,
    )
    with tqdm(
        total=len(photos), unit="img", desc="grading", disable=args.quiet, leave=False
    ) as bar:
        summary = predict(model, config, photos, settings, facts, bar.update)
    not_read = summary.total - summary.graded - summary.counts.get("ungradable", 0)
    if args.resume:
        print(
            f"resumed: {summary.resumed} of {summary.total} photographs were already in {summary.csv}, not graded again"
        )
    print(
        f"graded {summary.graded} of {summary.total} photographs ({summary.counts.get('ungradable', 0)} ungradable, "
        f"{not_read} not read) in {summary.seconds:.1f} s"
    )
    print(f"predictions: {summary.csv}")
    if summary.reference is not None:
        reference = summary.reference
        qwk = reference["intervals"]["qwk"]
        print(
            f"against reference grades ({reference['n']} photographs): QWK {qwk['value']:.3f} "
            f"(95% CI {qwk['low']:.3f} to {qwk['high']:.3f}), ECE "
            f"{reference['calibration']['ece']:.3f}; {summary.csv.parent / 'summary.json'}"
        )
    print(f"report: {summary.report}")
    return summary.exit_code


if __name__ == "__main__":
    sys.exit(run_cli(main))
