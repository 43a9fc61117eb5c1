"""Network definitions: ISR, lesion segmentation, grading, their composite, Grad-CAM and losses.

Knows nothing of datasets, stages, optimisers or metrics (BasicSR's archs/ vs models/ split).
"""

from models.deepmt_dr import DeepMTDR, Outputs
from models.grading import GradingNet
from models.isr import ISRNet
from models.lesion_seg import LesionSegNet
from models.registry import create_model, list_models, register_model

__all__ = [
    "DeepMTDR",
    "Outputs",
    "GradingNet",
    "ISRNet",
    "LesionSegNet",
    "create_model",
    "list_models",
    "register_model",
]
