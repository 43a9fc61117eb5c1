"""The embedded semi-synthetic fundus dataset: real normal fundi with rendered DR lesions, masks and ICDR grades.

``python train.py`` uses it when no dataset is given, so the project trains and tests without downloads.

Backgrounds are real normal fundi: ``skimage.data.retina()`` (CC0) and a few grade-0 IDRiD training images
shipped in ``data/backgrounds/`` (CC BY 4.0, see its README). Each sample draws a background, augments it
(mirroring, rotation, scale, shift, brightness/contrast/gamma/colour), draws a target grade from
``class_mix`` and renders lesions consistent with it, each in a local patch with its own opacity map:
microaneurysms, dot/blot and flame haemorrhages, hard exudates, cotton-wool spots, and for grade 4
neovascular tufts or a preretinal haemorrhage (how each looks and is drawn: :mod:`data.synthetic.lesions`).

The lesion masks are exactly the pixels a lesion's opacity touched, clipped to the FOV, so pixels outside
the masks (and ``new_vessels``) equal the lesion-free background. The label is computed from what was
rendered inside the FOV by :func:`icdr_grade`, never copied from the target. Everything is a pure
function of ``(seed, split, index)``: bit-identical in any process and any order of access.

Modules, each importing only those above it: :mod:`~data.synthetic.grading` (the ICDR rule),
:mod:`~data.synthetic.backgrounds` (loading, anatomy, augmentation), :mod:`~data.synthetic.lesions`
(painting one lesion), :mod:`~data.synthetic.placement` (where lesions go per grade),
:mod:`~data.synthetic.render` (one sample), :mod:`~data.synthetic.pool` (packed renders, process pool),
:mod:`~data.synthetic.dataset` (the torch dataset), :mod:`~data.synthetic.cli` (``python -m data.synthetic``).
"""

from data.synthetic.backgrounds import (
    ANATOMY_WORK_SIZE,
    BACKGROUND_CHOICES,
    BACKGROUND_DIR,
    BACKGROUND_IDRID_IDS,
    FOVEA_DISC_DISTANCE_DD,
    Anatomy,
    Background,
    load_backgrounds,
)
from data.synthetic.cli import main, write_dataset
from data.synthetic.dataset import SCALES, SyntheticFundus
from data.synthetic.grading import (
    COUNT_KEYS,
    NUM_QUADRANTS,
    PROLIFERATIVE_SIGNS,
    SEVERE_HE_PER_QUADRANT,
    icdr_grade,
)
from data.synthetic.lesions import ALPHA_CUTOFF
from data.synthetic.render import (
    MIN_SIZE,
    SPLITS,
    SyntheticFundusImage,
    check_split,
    noise_generator,
    normalise_class_mix,
    render_background,
    render_sample,
    sample_id,
)

__all__ = [
    "ALPHA_CUTOFF",
    "ANATOMY_WORK_SIZE",
    "BACKGROUND_CHOICES",
    "BACKGROUND_DIR",
    "BACKGROUND_IDRID_IDS",
    "COUNT_KEYS",
    "FOVEA_DISC_DISTANCE_DD",
    "MIN_SIZE",
    "NUM_QUADRANTS",
    "PROLIFERATIVE_SIGNS",
    "SCALES",
    "SEVERE_HE_PER_QUADRANT",
    "SPLITS",
    "Anatomy",
    "Background",
    "SyntheticFundus",
    "SyntheticFundusImage",
    "check_split",
    "icdr_grade",
    "load_backgrounds",
    "main",
    "noise_generator",
    "normalise_class_mix",
    "render_background",
    "render_sample",
    "sample_id",
    "write_dataset",
]
