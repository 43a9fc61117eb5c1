"""bench/train_step.py and bench/infer.py run on the CPU and print the documented JSON fields."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIELDS = {
    "device",
    "commit",
    "date",
    "hr",
    "lr",
    "batch",
    "dtype",
    "images_per_s",
    "peak_memory_gb",
    "gflop_per_image",
    "achieved_tflop_s",
}
TINY = [
    "--hr",
    "64",
    "--batch",
    "2",
    "--steps",
    "1",
    "--warmup",
    "0",
    "run.threads=1",
    "model.isr_blocks=1",
    "model.seg_width=0.25",
]


def _lines(script, *args):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_train_step_prints_project_and_naive_lines_with_the_ratio():
    project, naive = _lines("train_step.py", "--naive", *TINY)
    assert FIELDS <= project.keys() and FIELDS <= naive.keys()
    assert (project["variant"], naive["variant"]) == ("project", "naive")
    assert project["hr"] == 64 and project["lr"] == 16 and project["gflop_per_image"] > 0
    assert project["seg_width"] == 0.25  # the override, not --seg-width's default, is reported
    # The same losses; the project takes both gradients from one backward, where the published
    # step passes through the grader twice, so it counts no more FLOPs (and within 20%).
    assert 0.8 * naive["gflop_per_image"] <= project["gflop_per_image"] <= naive["gflop_per_image"]
    assert project["speedup_vs_naive"] == round(project["images_per_s"] / naive["images_per_s"], 2)


def test_infer_prints_one_line():
    (line,) = _lines("infer.py", *[arg for arg in TINY if not arg.startswith("run.")])
    assert FIELDS <= line.keys() and line["bench"] == "infer" and line["images_per_s"] > 0
