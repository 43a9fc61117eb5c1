"""The HTML reports of predict.py and test.py rendered in headless Chromium (Debian's chromium
package): every row and image is there and every image loads; the static file alone (no
JavaScript) already holds the table."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from photo_fixtures import textured_fundus, tiny_checkpoint
from PIL import Image

import predict as predict_cli
import test as test_cli
from engine.cli import run_cli

CHROMIUM = Path("/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not CHROMIUM.is_file(),
    reason="headless Chromium not installed (Debian: apt-get install chromium)",
)
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]
MISSING = re.compile(
    r"<img[^>]*class=\"[^\"]*\bmissing\b"
)  # what the report's script marks an image that did not load


def dump_dom(page: Path, profile: Path) -> str:
    """The DOM after Chromium loaded ``page`` (its images and inline script included)."""
    result = subprocess.run(
        [
            str(CHROMIUM),
            *FLAGS,
            f"--user-data-dir={profile}",
            "--dump-dom",
            page.resolve().as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


class _Tags(HTMLParser):
    """Counts of the static file's table rows and images (what a browser without JavaScript shows)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows, self.images = 0, []

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows += 1
        elif tag == "img":
            self.images.append(dict(attrs)["src"])


def _static(page: Path) -> _Tags:
    tags = _Tags()
    tags.feed(page.read_text())
    return tags


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@needs_chromium
def test_prediction_report_in_chromium(tmp_path, checkpoint):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(3):
        Image.fromarray(textured_fundus(150, 200, seed=index)).save(folder / f"photo_{index}.png")
    (folder / "broken.jpg").write_text("not an image")
    out = tmp_path / "out"
    argv = [
        str(folder),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--quiet",
        "--workers",
        "0",
        "--amp",
        "off",
    ]
    assert run_cli(predict_cli.main, argv) == 3
    page = out / "report.html"
    static = _static(page)
    assert (
        static.rows == 1 + 4 and len(static.images) == 3
    )  # header + one row per input; no thumbnail for the broken file
    assert all((out / src).is_file() and not src.startswith(("http", "/")) for src in static.images)
    dom = dump_dom(page, tmp_path / "profile")
    body = dom[dom.index("<tbody>") : dom.index("</tbody>")]
    assert body.count("<tr>") == 4 and len(re.findall(r"<img class=\"thumb\"", body)) == 3
    assert not MISSING.search(body) and body.count("panels/") == 3 and "unreadable" in body
    # A thumbnail that is not there shows up as missing once Chromium has tried to load it.
    (out / static.images[0]).unlink()
    dom = dump_dom(page, tmp_path / "profile")
    assert len(MISSING.findall(dom)) == 1


@needs_chromium
def test_test_report_in_chromium(tmp_path, checkpoint):
    figures = tmp_path / "fig"
    argv = ["--quiet", "--checkpoint", str(checkpoint), "--figures", str(figures), "--samples", "2"]
    assert run_cli(test_cli.main, argv) == 0
    (page,) = figures.rglob("report.html")
    static = _static(page)
    assert len(static.images) == 3 + 2 and all(
        src.startswith("data:image/png;base64,") for src in static.images
    )  # self-contained
    dom = dump_dom(page, tmp_path / "profile")
    for heading in (
        "Grading",
        "Confusion matrix",
        "Super-resolution",
        "Lesion segmentation",
        "Sample panels",
    ):
        assert heading in dom
    assert dom.count("<img") == 5 and not MISSING.search(dom)
    assert "<td>true 4</td>" in dom and "<td>mean</td>" in dom
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


@needs_chromium
def test_readme_screenshot_script(tmp_path, checkpoint):
    spec = importlib.util.spec_from_file_location(
        "make_report_screenshot", Path("imgs/make_report_screenshot.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "shot.png"
    assert module.main(["--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.width == module.WIDTH and image.height > 500
        assert len(image.convert("RGB").getcolors(1 << 16) or []) > 50  # a page, not a blank screen
