"""Network definitions: ISR, lesion segmentation, grading, their composite, Grad-CAM and losses.

Knows nothing of datasets, stages, optimisers or metrics (BasicSR's archs/ vs models/ split).

The names below are imported on first use (PEP 562), so that ``models.ordinal`` (the grade
decoding, which evaluation/metrics.py and the ONNX Runtime path of predict.py use) imports no
network class: ``from models import DeepMTDR`` works as before.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "DeepMTDR": "models.deepmt_dr",
    "Outputs": "models.deepmt_dr",
    "GradingNet": "models.grading",
    "ISRNet": "models.isr",
    "LesionSegNet": "models.lesion_seg",
    "create_model": "models.registry",
    "list_models": "models.registry",
    "register_model": "models.registry",
}

__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
