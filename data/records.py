"""The sample schema every dataset yields, so batches collate with the default collate_fn.

A sample is a dict with fixed keys (the contract of every loader in data/datasets/ and of the
cache, data/cache.py; docs/ARCHITECTURE.md, "Packages"):

- ``lr``         float32 ``[3,h,w]`` in [0,1]
- ``hr``         float32 ``[3,H,W]`` in [0,1], ``H = scale * h``
- ``grade``      int64 scalar, ``-1`` when unknown (segmentation-only image)
- ``masks``      float32 ``[4,H,W]`` in {0,1}, order MA, HE, EX, SE
- ``mask_valid`` bool ``[4]``, False where the dataset has no mask for that lesion
- ``fov``        float32 ``[1,H,W]`` field-of-view mask
- ``id``         str, unique across dataset and split
"""

from __future__ import annotations

import torch

LESIONS: tuple[str, ...] = ("MA", "HE", "EX", "SE")
LESION_NAMES: dict[str, str] = {
    "MA": "microaneurysms",
    "HE": "haemorrhages",
    "EX": "hard exudates",
    "SE": "soft exudates",
}
NUM_GRADES = 5
GRADE_NAMES: tuple[str, ...] = ("none", "mild", "moderate", "severe", "proliferative")
UNKNOWN_GRADE = -1
SAMPLE_KEYS: frozenset[str] = frozenset({"lr", "hr", "grade", "masks", "mask_valid", "fov", "id"})


class DataError(ValueError):
    """Bad input data: the message names the file, row or field at fault."""


def make_sample(
    lr: torch.Tensor,
    hr: torch.Tensor,
    grade: int,
    masks: torch.Tensor,
    mask_valid: torch.Tensor,
    fov: torch.Tensor,
    sample_id: str,
) -> dict:
    """Assemble one sample dict, checking shapes so a bad loader fails at its source."""
    if hr.ndim != 3 or hr.shape[0] != 3 or lr.ndim != 3 or lr.shape[0] != 3:
        raise DataError(
            f"{sample_id}: lr/hr must be [3,h,w], got {tuple(lr.shape)} and {tuple(hr.shape)}"
        )
    size = hr.shape[-2:]
    if masks.shape != (len(LESIONS), *size) or fov.shape != (1, *size):
        raise DataError(
            f"{sample_id}: masks {tuple(masks.shape)} / fov {tuple(fov.shape)} do not match hr size {tuple(size)}"
        )
    if not (UNKNOWN_GRADE <= grade < NUM_GRADES):
        raise DataError(f"{sample_id}: grade {grade} outside -1..{NUM_GRADES - 1}")
    return {
        "lr": lr.float(),
        "hr": hr.float(),
        "grade": torch.tensor(grade, dtype=torch.int64),
        "masks": masks.float(),
        "mask_valid": mask_valid.bool(),
        "fov": fov.float(),
        "id": sample_id,
    }
