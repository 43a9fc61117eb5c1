"""README's pipeline figure script still runs and draws a real image."""

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image


def test_pipeline_figure_is_drawn(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "make_pipeline_figure", Path("imgs/make_pipeline_figure.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.draw(tmp_path / "pipeline.png")
    with Image.open(path) as image:
        assert image.size[0] > 1000 and len(np.unique(np.asarray(image.convert("L")))) > 50
