"""The config's value checks, one function per section; :func:`validate` runs them in order.

Each check raises :class:`ConfigError` naming the dotted key (``data.hr_size``) and the value it
got. Key names and types are checked while merging (``engine/config.py``); these are the values.
"""

from __future__ import annotations

import math

from data.datasets import DATASETS as PUBLIC_DATASETS
from engine.config_schema import (
    INPUTS,
    SEG_DIVISOR,
    STAGES,
    Config,
    ConfigError,
    StageConfig,
    parse_stages,
)
from engine.methods import METHODS
from models.deepmt_dr import CAM_STAGES
from models.grading import HEAD_ACTIVATIONS
from models.isr import SUPPORTED_SCALES
from models.losses import SEG_LOSSES
from models.ordinal import GRADE_DECODINGS
from models.registry import GRADERS, ISR_KINDS

OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")
SCHEDULES = ("step", "cosine", "constant")
# (data.<key>, smallest, largest) of the augmentation strengths: a factor 1 - s must stay positive,
# the blur kernel (2 * ceil(3 sigma) + 1 taps) small next to the image.
AUGMENT_RANGES = (
    ("aug_rotation", 0.0, 180.0),
    ("aug_scale", 0.0, 0.5),
    ("aug_brightness", 0.0, 0.9),
    ("aug_contrast", 0.0, 0.9),
    ("aug_gamma", 0.0, 0.9),
    ("aug_hue", 0.0, 0.5),
    ("aug_blur_sigma", 0.0, 4.0),
    ("aug_blur_prob", 0.0, 1.0),
)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _one_of(key: str, value, allowed) -> None:
    _require(value in allowed, f"{key} must be one of {', '.join(allowed)}, got {value!r}")


def check_data(config: Config) -> None:
    """``data``: sizes the nets can take, a known dataset, split fractions, synthetic sizes."""
    data = config.data
    _require(
        data.scale in SUPPORTED_SCALES,
        f"data.scale must be one of {SUPPORTED_SCALES}, got {data.scale}",
    )
    _require(data.hr_size > 0, f"data.hr_size must be positive, got {data.hr_size}")
    # The U-Net needs HR sizes divisible by 16, the ISR net by the scale (2, 4, 8 divide 16).
    _require(
        data.hr_size % SEG_DIVISOR == 0,
        f"data.hr_size {data.hr_size} must be divisible by {SEG_DIVISOR}",
    )
    _require(data.crop_size >= 0, f"data.crop_size must be >= 0, got {data.crop_size}")
    _require(
        data.crop_size % SEG_DIVISOR == 0,
        f"data.crop_size {data.crop_size} must be 0 or divisible by {SEG_DIVISOR}",
    )
    _one_of("data.dataset", data.dataset, ("synthetic", *PUBLIC_DATASETS))
    _require(
        data.dataset == "synthetic" or bool(data.root),
        f"data.root is required for dataset {data.dataset!r} (train.py --data-root PATH)",
    )
    _require(
        0 <= data.val_fraction < 1, f"data.val_fraction must be in [0, 1), got {data.val_fraction}"
    )
    _require(
        0 <= data.test_fraction < 1,
        f"data.test_fraction must be in [0, 1), got {data.test_fraction}",
    )
    _require(
        data.val_fraction + data.test_fraction < 1,
        f"data.val_fraction + data.test_fraction must be < 1, got {data.val_fraction + data.test_fraction}",
    )
    _require(
        1 <= data.jpeg_quality <= 100,
        f"data.jpeg_quality must be in 1..100, got {data.jpeg_quality}",
    )
    _require(
        data.cache_image_format in ("jpeg", "png"),
        f"data.cache_image_format must be jpeg or png, got {data.cache_image_format!r}",
    )
    for name in ("n_train", "n_val", "n_test"):
        _require(
            getattr(data, name) > 0, f"data.{name} must be positive, got {getattr(data, name)}"
        )
    _require(data.num_classes >= 2, f"data.num_classes must be >= 2, got {data.num_classes}")
    check_data_loading(config)


def check_data_loading(config: Config) -> None:
    """``data``: workers, prefetching, augmentation strengths and lesion-centred crops."""
    data = config.data
    for key in ("prepare_workers", "num_workers"):
        _require(getattr(data, key) >= 0, f"data.{key} must be >= 0, got {getattr(data, key)}")
    _require(
        data.prefetch_factor >= 1, f"data.prefetch_factor must be >= 1, got {data.prefetch_factor}"
    )
    for key, low, high in AUGMENT_RANGES:
        value = getattr(data, key)
        _require(low <= value <= high, f"data.{key} must be in [{low}, {high}], got {value}")
    _require(
        0 <= data.lesion_crop_share <= 1,
        f"data.lesion_crop_share must be in [0, 1], got {data.lesion_crop_share}",
    )


def check_model(config: Config) -> None:
    """``model``: positive widths, known nets, and the settings a chosen grader can take."""
    model = config.model
    _require(
        model.isr_channels > 0, f"model.isr_channels must be positive, got {model.isr_channels}"
    )
    _require(model.isr_blocks >= 0, f"model.isr_blocks must be >= 0, got {model.isr_blocks}")
    _require(model.seg_width > 0, f"model.seg_width must be positive, got {model.seg_width}")
    _require(
        model.seg_prior is None or 0 < model.seg_prior < 1,
        f"model.seg_prior must be in (0, 1), got {model.seg_prior}",
    )
    _require(
        model.cam_target in ("predicted", "any_dr"),
        f"model.cam_target must be predicted or any_dr, got {model.cam_target!r}",
    )
    _one_of("model.isr", model.isr, ISR_KINDS)
    _one_of("model.grader", model.grader, GRADERS)
    _one_of("model.cam_stages", model.cam_stages, CAM_STAGES)
    _require(
        model.grader_hidden > 0, f"model.grader_hidden must be positive, got {model.grader_hidden}"
    )
    _one_of("model.grader_head_activation", model.grader_head_activation, HEAD_ACTIVATIONS)
    _require(
        model.grader_head_activation == "relu" or model.grader != "chen_net",
        "model.grader_head_activation: the chen_net grader has its own head; leave it relu",
    )
    _require(
        model.grader_width > 0, f"model.grader_width must be positive, got {model.grader_width}"
    )
    size, hr = model.grader_input_size, config.data.hr_size
    _require(
        size == 0 or (0 < size <= hr and hr % size == 0),
        f"model.grader_input_size must be 0 (the HR size) or divide data.hr_size={hr}, got {size}",
    )
    _require(
        model.grader_width == 1.0 or model.grader != "chen_net",
        "model.grader_width: the chen_net grader has fixed widths; leave it 1",
    )
    _require(
        model.grader_width == 1.0 or model.imagenet_weights is None,
        f"model.grader_width={model.grader_width} cannot load ImageNet weights (model.imagenet_weights); "
        "use width 1 or no ImageNet weights",
    )
    _require(
        model.imagenet_weights is None or bool(str(model.imagenet_weights).strip()),
        "model.imagenet_weights must be a .pth path, imagenet, or null; got an empty value",
    )
    _require(
        model.imagenet_weights is None or model.grader != "chen_net",
        "model.imagenet_weights: the chen_net grader has no ImageNet weights; leave it null",
    )
    _one_of("model.grade_decoding", model.grade_decoding, GRADE_DECODINGS)


def check_method(config: Config) -> None:
    """``method``: a recipe of engine/methods.py."""
    _one_of("method", config.method, METHODS)


def check_loss(config: Config) -> None:
    """``loss``: pixel loss kind, smoothing and weights (one class weight per grade)."""
    loss = config.loss
    _require(loss.pixel in ("mse", "l1"), f"loss.pixel must be mse or l1, got {loss.pixel!r}")
    _require(
        0 <= loss.label_smoothing < 1,
        f"loss.label_smoothing must be in [0, 1), got {loss.label_smoothing}",
    )
    _require(
        loss.ordinal_weight >= 0, f"loss.ordinal_weight must be >= 0, got {loss.ordinal_weight}"
    )
    _one_of("loss.seg_loss", loss.seg_loss, SEG_LOSSES)
    if loss.isr_seg_loss is not None:
        _one_of("loss.isr_seg_loss", loss.isr_seg_loss, SEG_LOSSES)
    _require(
        loss.seg_pos_weight > 0, f"loss.seg_pos_weight must be positive, got {loss.seg_pos_weight}"
    )
    weights, classes = loss.class_weights, config.data.num_classes
    _require(
        weights in ("auto", "none")
        or (
            isinstance(weights, list)
            and len(weights) == classes
            and all(isinstance(w, (int, float)) and w >= 0 for w in weights)
        ),
        f"loss.class_weights must be 'auto', 'none' or {classes} non-negative numbers, got {weights!r}",
    )


def check_stage(stage: str, settings: StageConfig) -> None:
    """``train.<stage>``: epochs, batch, schedule, step cap, learning rates, crop."""
    key = f"train.{stage}"
    _require(settings.epochs >= 0, f"{key}.epochs must be >= 0, got {settings.epochs}")
    _require(
        settings.batch_size > 0, f"{key}.batch_size must be positive, got {settings.batch_size}"
    )
    _require(
        settings.schedule in SCHEDULES,
        f"{key}.schedule must be step, cosine or constant, got {settings.schedule!r}",
    )
    _require(settings.max_steps >= 0, f"{key}.max_steps must be >= 0, got {settings.max_steps}")
    for lr in ("lr_isr", "lr_seg", "lr_cls", "lr_fusion"):
        value = getattr(settings, lr)
        # 0 freezes that sub-net in the stage (engine/stage_plan.py), e.g. train.joint.lr_cls=0.
        _require(value >= 0, f"{key}.{lr} must be >= 0 (0: frozen in this stage), got {value}")
    crop = settings.crop_size
    _require(
        crop is None or (crop >= 0 and crop % SEG_DIVISOR == 0),
        f"{key}.crop_size {crop} must be 0 or a positive multiple of {SEG_DIVISOR}",
    )
    _require(
        settings.eval_every is None or settings.eval_every >= 0,
        f"{key}.eval_every must be >= 0 (0: never validate) or null, got {settings.eval_every}",
    )


def check_train(config: Config) -> None:
    """``train``: the stage list and input, each stage's settings, checkpoints, caches, EMA."""
    train = config.train
    parse_stages(train.stage)
    _one_of("train.input", train.input, INPUTS)
    for stage in STAGES:
        check_stage(stage, getattr(train, stage))
    _require(
        train.max_steps_per_epoch >= 0,
        f"train.max_steps_per_epoch must be >= 0, got {train.max_steps_per_epoch}",
    )
    _require(
        train.threshold_images >= 0,
        f"train.threshold_images must be >= 0 (0: every training image), got {train.threshold_images}",
    )
    _require(
        train.eval_every >= 0,
        f"train.eval_every must be >= 0 (0: never validate), got {train.eval_every}",
    )
    for key in ("checkpoint_every_steps", "checkpoint_every_minutes", "max_bad_steps"):
        _require(getattr(train, key) >= 0, f"train.{key} must be >= 0, got {getattr(train, key)}")
    _require(train.cache_max_gb >= 0, f"train.cache_max_gb must be >= 0, got {train.cache_max_gb}")
    _require(
        train.init_synthetic_hr_size >= 0 and train.init_synthetic_hr_size % SEG_DIVISOR == 0,
        f"train.init_synthetic_hr_size must be 0 or a positive multiple of {SEG_DIVISOR}, got {train.init_synthetic_hr_size}",
    )
    _require(
        train.joint_max_psnr_drop_db is None or math.isfinite(train.joint_max_psnr_drop_db),
        f"train.joint_max_psnr_drop_db must be a number of dB or null, got {train.joint_max_psnr_drop_db}",
    )
    _require(0 <= train.ema_decay < 1, f"train.ema_decay must be in [0, 1), got {train.ema_decay}")


def check_test(config: Config) -> None:
    """``test``: the input test.py grades."""
    _one_of("test.input", config.test.input, INPUTS)
    test = config.test
    _require(
        test.seg_tile >= 0, f"test.seg_tile must be >= 0 (0: whole images), got {test.seg_tile}"
    )
    _require(
        test.seg_tile == 0 or 0 <= test.seg_tile_overlap < test.seg_tile,
        f"test.seg_tile_overlap must be in [0, test.seg_tile), got {test.seg_tile_overlap}",
    )


def check_run(config: Config) -> None:
    """``run``: the folder name, kept checkpoints, threads and the speed switches."""
    run = config.run
    _require(
        bool(run.name) and "/" not in run.name,
        f"run.name must be a plain folder name, got {run.name!r}",
    )
    _require(run.keep >= 0, f"run.keep must be >= 0, got {run.keep}")
    _require(run.threads >= 0, f"run.threads must be >= 0, got {run.threads}")
    for switch in ("amp", "channels_last"):
        value = getattr(run, switch)
        _require(
            value == "auto" or isinstance(value, bool),
            f"run.{switch} must be auto, true or false, got {value!r}",
        )
    _require(
        run.amp_dtype in ("bfloat16", "float16"),
        f"run.amp_dtype must be bfloat16 or float16, got {run.amp_dtype!r}",
    )
    _one_of("run.optimizer_impl", run.optimizer_impl, OPTIMIZER_IMPLS)


# In order: the first failing check names its key.
SECTION_CHECKS = (
    check_data,
    check_model,
    check_method,
    check_loss,
    check_train,
    check_test,
    check_run,
)


def validate(config: Config) -> None:
    """Reject impossible values early, naming the key."""
    for check in SECTION_CHECKS:
        check(config)
