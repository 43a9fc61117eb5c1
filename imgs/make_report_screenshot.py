"""Draw README's screenshot of predict.py's report (imgs/predict_report.png) with headless Chromium.

    python imgs/make_report_screenshot.py                                  # the released weights
    python imgs/make_report_screenshot.py --checkpoint runs/demo           # any checkpoint

Runs ``predict.py --demo`` into a temporary folder and screenshots the top of its report.html
(Debian's ``chromium`` package; nothing is fetched: the report has no network references).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=5000",
]
WINDOW = (1280, 1000)
WIDTH = 960  # the committed PNG's width


def screenshot(report: Path, path: Path, profile: Path) -> Path:
    """A WIDTH-wide PNG of the report's first screen."""
    raw = profile / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            f"--screenshot={raw}",
            report.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    with Image.open(raw) as image:
        small = image.convert("RGB").resize(
            (WIDTH, round(image.height * WIDTH / image.width)), Image.Resampling.LANCZOS
        )
    small.quantize(
        colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG
    ).save(path, optimize=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", help="predict.py --checkpoint (default: the released model)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "imgs" / "predict_report.png")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        command = [
            sys.executable,
            str(ROOT / "predict.py"),
            "--demo",
            "--out",
            str(work / "demo"),
            "--quiet",
        ]
        command += ["--checkpoint", args.checkpoint] if args.checkpoint else []
        subprocess.run(command, cwd=ROOT, check=True)
        print(screenshot(work / "demo" / "report.html", args.out, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
