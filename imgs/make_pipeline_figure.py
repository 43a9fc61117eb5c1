"""Draw README's pipeline figure (imgs/pipeline.png) from a real embedded-dataset sample.

    python imgs/make_pipeline_figure.py

LR in; the ISR net restores SR; the segmentation net maps four lesions on SR; the grader takes
SR + lesion maps and outputs the grade; the HR branch gives the targets of the
segmentation-aware and task-aware (Grad-CAM) losses. The SR panel is the bicubic upsample (an
untrained ISR net starts as bicubic); the lesion panel shows the ground-truth masks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data.degrade import bicubic_upsample, degrade  # noqa: E402
from data.synthetic import render_sample  # noqa: E402

LESION_COLOURS = np.array([[1.0, 0.1, 0.1], [1.0, 0.6, 0.0], [1.0, 1.0, 0.2], [0.3, 0.8, 1.0]])


def sample_images(size: int = 512, scale: int = 4) -> dict[str, np.ndarray]:
    """HR, LR, bicubic and a lesion overlay of one grade-3 sample, as HxWx3 arrays in [0,1]."""
    sample = next(s for i in range(50) if (s := render_sample(7, "test", i, size)).grade == 3)
    hr = torch.from_numpy(sample.image).permute(2, 0, 1).float().div(255)[None]
    lr = degrade(hr, scale)
    bicubic = bicubic_upsample(lr, scale)
    overlay = hr[0].permute(1, 2, 0).numpy() * 0.35
    for channel, colour in enumerate(LESION_COLOURS):
        overlay[sample.masks[channel]] = colour
    to_hwc = lambda t: t[0].permute(1, 2, 0).clamp(0, 1).numpy()  # noqa: E731
    return {"hr": to_hwc(hr), "lr": to_hwc(lr), "sr": to_hwc(bicubic), "lesions": overlay}


def draw(path: Path) -> Path:
    images = sample_images()
    figure = Figure(figsize=(13, 5.2), dpi=110)
    axes = figure.add_axes((0, 0, 1, 1))
    axes.set_xlim(0, 13)
    axes.set_ylim(0, 5.2)
    axes.axis("off")

    def picture(key, x, y, caption, size=1.6):
        axes.imshow(
            images[key],
            extent=(x, x + size, y, y + size),
            interpolation="nearest" if key == "lr" else "bilinear",
        )
        axes.text(x + size / 2, y - 0.15, caption, ha="center", va="top", fontsize=10)

    def box(x, y, w, h, text, colour):
        axes.add_patch(
            FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", fc=colour, ec="black", lw=1)
        )
        axes.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=10, weight="bold")

    def arrow(x0, y0, x1, y1, style="-|>", colour="black", dashed=False):
        axes.add_patch(
            FancyArrowPatch(
                (x0, y0),
                (x1, y1),
                arrowstyle=style,
                mutation_scale=14,
                color=colour,
                lw=1.4,
                linestyle="--" if dashed else "-",
            )
        )

    picture("lr", 0.2, 2.9, "LR fundus (256 px)")
    box(2.2, 3.35, 1.3, 0.7, "ISR net\n(x2/x4/x8)", "#cfe2f3")
    picture("sr", 3.9, 2.9, "SR image (1024 px)")
    box(5.9, 3.35, 1.5, 0.7, "lesion seg net\nmulti-scale U-Net", "#d9ead3")
    picture("lesions", 7.8, 2.9, "MA  HE  EX  SE maps")
    box(9.8, 3.35, 1.5, 0.7, "grading net\nResNet-18 + SPP", "#fce5cd")
    axes.text(12.15, 3.7, "DR grade\n0-4", ha="center", va="center", fontsize=12, weight="bold")
    arrow(1.8, 3.7, 2.2, 3.7)
    arrow(3.5, 3.7, 3.9, 3.7)
    arrow(5.5, 3.7, 5.9, 3.7)
    arrow(7.4, 3.7, 7.8, 3.7)
    arrow(9.4, 3.7, 9.8, 3.7)
    arrow(11.3, 3.7, 11.7, 3.7)
    arrow(5.5, 4.3, 9.8, 4.0, style="-|>", colour="#888888")  # SR also feeds the grader
    picture("hr", 0.2, 0.35, "HR (training only)")
    box(2.2, 0.75, 2.9, 0.75, "pixel (MSE/L1) + TV loss\nSR vs HR", "#eeeeee")
    box(5.5, 0.75, 3.2, 0.75, "segmentation-aware loss\nseg(SR) vs seg(HR)", "#eeeeee")
    box(
        9.1,
        0.75,
        3.6,
        0.75,
        "task-aware loss: fused Grad-CAM\nof 4 grader stages, SR vs HR",
        "#eeeeee",
    )
    arrow(1.8, 1.1, 2.2, 1.1)
    for x in (3.6, 7.1, 10.9):
        arrow(x, 1.5, x, 2.55, colour="#cc0000", dashed=True)
    axes.text(
        5.35, 2.0, "gradients flow back into the ISR net", color="#cc0000", ha="center", fontsize=9
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


if __name__ == "__main__":
    print(draw(Path(__file__).resolve().parent / "pipeline.png"))
