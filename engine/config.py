"""One typed configuration (dataclasses) whose defaults are the paper's hyperparameters.

A run's config = dataclass defaults <- YAML preset (``configs/*.yaml``) <- method recipe
(``--method NAME``, ``engine/methods.py``) <- ``key=value`` command-line overrides with dotted
keys (``data.hr_size=128``, ``train.cls.epochs=3``). Unknown keys, wrong types and impossible
values raise :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from data.datasets import DATASETS as PUBLIC_DATASETS
from engine.methods import METHODS, Method
from models.deepmt_dr import CAM_STAGES
from models.grading import HEAD_ACTIVATIONS
from models.isr import SUPPORTED_SCALES
from models.ordinal import GRADE_DECODINGS
from models.registry import GRADERS, ISR_KINDS

STAGES = ("isr", "seg", "cls", "joint")
SEG_DIVISOR = 16  # the U-Net pools four times
INPUTS = ("lr", "hr")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for_loop")
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
DEFAULT_PRESET = "configs/demo.yaml"
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


class ConfigError(ValueError):
    """A bad configuration value or key; the message names it."""


@dataclass
class DataConfig:
    # "synthetic" (embedded) or a public dataset of data/datasets (idrid, ddr, eyepacs, ...).
    dataset: str = "synthetic"
    root: str | None = None  # the public dataset as unpacked
    # Preprocessing cache of a public dataset: <cache_dir>/<dataset>-<hr_size>, built when missing.
    cache_dir: str = "data_cache"
    jpeg_quality: int = 95
    prepare_workers: int = 0  # 0 = one per CPU core
    skip_bad: bool = False  # leave unreadable images out of the cache instead of stopping
    # Splits the dataset leaves open are carved per patient and written to split_file
    # (default splits/<dataset>.csv; commit it).
    split_file: str | None = None
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    hr_size: int = 1024
    scale: int = 4
    num_classes: int = 5
    # Embedded synthetic dataset sizes (ignored by file-based datasets).
    n_train: int = 2000
    n_val: int = 200
    n_test: int = 300
    class_mix: list[float] | None = None
    backgrounds: str = "all"
    # HR->LR degradation: the paper names blur 3x3 and noise variance 0.001, the code used none.
    blur_kernel: int = 0
    blur_sigma: float = 0.0
    noise_var: float = 0.0
    # HR crop for the isr and seg stages (the published stage1_1 used 1024/4); 0 = whole image.
    crop_size: int = 256
    # Random left-right and top-bottom flips of every training batch (off: the published setup;
    # on in the IDRiD presets, where 332 graded images are few).
    flip: bool = False
    # Random rotation, zoom, brightness/contrast/gamma/hue and blur of every training batch,
    # batched on the device after the flips (data/augment.py: image, masks and FOV move together,
    # LR is made again from the augmented HR). Each aug_* strength is a maximum; 0 turns it off.
    augment: bool = False
    aug_rotation: float = 180.0  # degrees, angle in [-aug_rotation, aug_rotation]
    aug_scale: float = 0.1  # zoom in [1 - aug_scale, 1 + aug_scale]
    aug_brightness: float = 0.2  # factor in [1 - b, 1 + b]
    aug_contrast: float = 0.2  # factor in [1 - c, 1 + c], around the mean grey inside the FOV
    aug_gamma: float = 0.2  # exponent in [1 - g, 1 + g]
    aug_hue: float = 0.02  # hue rotation in turns, in [-aug_hue, aug_hue]
    aug_blur_sigma: float = 1.0  # Gaussian blur sigma in HR pixels, in (0, aug_blur_sigma]
    aug_blur_prob: float = 0.25  # share of images blurred
    # cls and joint stages: draw training images with probability 1 / (count of its grade), with
    # replacement, same epoch length (engine/sampling.py). With loss.class_weights=auto the
    # imbalance is corrected twice (a warning says so); class_weights=none is the usual partner.
    balanced_sampling: bool = False
    # isr and seg stages: share of the crops (a per-image draw) centred on a lesion pixel of a
    # lesion type present in the image, instead of uniform; images without lesions crop uniformly.
    lesion_crop_share: float = 0.0
    num_workers: int = 0
    # Loader fast paths: page-locked batches for the GPU copy (CUDA only), workers kept alive
    # across epochs (num_workers > 0), batches loaded ahead per worker.
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    seed: int = 0


@dataclass
class ModelConfig:
    name: str = "deepmt_dr"
    # "net" (the ISR net) or "bicubic" (no ISR: a fixed bicubic upsampler; baselines, ablation).
    isr: str = "net"
    isr_channels: int = 32
    isr_blocks: int = 5
    isr_bicubic_skip: bool = True
    seg_width: float = 4.0
    # Start the lesion maps at this probability (RetinaNet's prior bias on the heads) instead of
    # 0.5; None: the default initialisation. Rare real lesions (~1% of pixels) need it.
    seg_prior: float | None = None
    use_lesions: bool = True
    # Grading net (models/registry.py GRADERS): resnet18_spp (DeepMT-DR's), chen_net, resnet50.
    grader: str = "resnet18_spp"
    grader_hidden: int = 512
    grader_dropout: float = 0.5
    # The grader head's hidden activation: "relu" (published) or "leaky_relu" (on in the IDRiD
    # presets: with ReLU the SPP head's hidden units died on real images, models/grading.py).
    grader_head_activation: str = "relu"
    # ImageNet initialisation of the grader's ResNet: a local torchvision .pth file, or "imagenet":
    # torchvision's IMAGENET1K_V1 weights from torch's hub cache (downloaded there when missing).
    imagenet_weights: str | None = None
    # Grad-CAM target of the task-aware loss: "predicted" grade or the published "any_dr".
    cam_target: str = "predicted"
    # Task-aware attention: "all" four grader stages' CAMs fused (published) or the "last" alone.
    cam_stages: str = "all"
    # Recompute the segmentation net's blocks in the backward pass instead of storing their
    # activations (less memory at 1024 px for about a third more segmentation compute).
    seg_checkpoint: bool = False
    # How a grade is read from the grader's probabilities (models/ordinal.py): "argmax" (published)
    # or "thresholds": the expected grade sum_k p_k * k cut at C-1 thresholds (the buffer
    # grade_thresholds, saved with the weights), fitted to maximise QWK on the training images
    # before each cls / joint validation.
    grade_decoding: str = "argmax"


@dataclass
class LossConfig:
    pixel: str = "mse"
    pixel_weight: float = 1.0
    tv_weight: float = 1e-6
    seg_weight: float = 1.0
    seg_aware_weight: float = 1.0
    task_aware_weight: float = 10.0
    cls_weight: float = 1.0
    # Fusion of stage CAMs trained in the cls stage towards the lesion map (published MVI loss).
    cam_fusion_weight: float = 1.0
    # "auto" (inverse train frequency), "none", or a list of one weight per class.
    class_weights: Any = "auto"
    # Label smoothing of the grading cross entropy (0 = off).
    label_smoothing: float = 0.0
    # Adds ordinal_weight * SmoothL1(expected grade sum_k p_k * k, true grade) to the grading loss
    # (0 = off); pairs with model.grade_decoding=thresholds.
    ordinal_weight: float = 0.0


@dataclass
class StageConfig:
    epochs: int = 1
    batch_size: int = 2
    lr_isr: float = 5e-5
    lr_seg: float = 2e-5
    lr_cls: float = 5e-5
    lr_fusion: float = 1e-5
    # "step" (x decay_gamma once at decay_epoch, as published), "cosine" or "constant".
    schedule: str = "constant"
    decay_epoch: int = 0
    decay_gamma: float = 1.0
    # HR crop of the isr and seg stages; None takes data.crop_size, 0 the whole image.
    crop_size: int | None = None
    # Steps per epoch of this stage (a random part of the training set, new each epoch);
    # 0 = train.max_steps_per_epoch, or the whole set.
    max_steps: int = 0


def _stage(**kwargs) -> Any:
    return field(default_factory=lambda: StageConfig(**kwargs))


@dataclass
class TrainConfig:
    # "all", one stage, or a comma list in stage order ("isr,cls"); each starts from the previous one's best.
    stage: str = "all"
    # What the seg and cls stages learn from: "hr" (published: HR crops / images) or "lr" (the frozen
    # ISR's output of the LR image; the bicubic upsample when model.isr=bicubic).
    input: str = "hr"
    isr: StageConfig = _stage(
        epochs=300, batch_size=2, schedule="step", decay_epoch=150, decay_gamma=0.2
    )
    seg: StageConfig = _stage(epochs=150, batch_size=2)
    cls: StageConfig = _stage(
        epochs=300, batch_size=2, schedule="step", decay_epoch=10, decay_gamma=0.2
    )
    joint: StageConfig = _stage(epochs=300, batch_size=1, lr_isr=1e-5, lr_cls=5e-5)
    # Start from another run's weights (a checkpoint .pt, e.g. pre-training on the embedded
    # dataset) instead of random / ImageNet initialisation; ignored when resuming. "synthetic":
    # pre-train on the embedded dataset first (engine/pretrain.py: this config's method, model.*
    # keys and data.scale, configs/demo.yaml's schedule) in <run.out_dir>/synthetic_<hash>, built
    # once, resumed if interrupted, reused by every run with the same pre-training config.
    init_from: str | None = None
    # HR size of the init_from=synthetic pre-training; 0 = this config's data.hr_size. Its 1600
    # images cost about (size / 128)^2 times the demo's training time: 128 is the demo's size.
    init_synthetic_hr_size: int = 0
    # Joint stage checkpoint selection (None = off: the best val_qwk): the incoming weights are
    # validated first (log.csv epoch 0) and are a candidate; an epoch whose val_psnr is more than
    # this many dB under theirs cannot become best. The best val_qwk at or above that floor wins.
    joint_max_psnr_drop_db: float | None = None
    weight_decay: float = 0.0
    clip_grad: float = 0.0
    max_steps_per_epoch: int = 0  # 0 = the whole training set each epoch
    eval_every: int = 1  # 0: never validate (each stage hands on its last weights; grade thresholds are still fitted)
    # Recovery checkpoints inside an epoch (checkpoints/recovery.pt, one file replaced each time):
    # every N steps and/or every M minutes of training; 0 turns either off. --resume continues
    # the newest checkpoint, so a killed run loses at most one interval (docs/RELIABILITY.md).
    checkpoint_every_steps: int = 0
    checkpoint_every_minutes: float = 10.0
    # A step whose loss or gradient is not finite is skipped (counted in log.csv, skipped_steps);
    # more than this many in a row stop the run, keeping the last good checkpoint.
    max_bad_steps: int = 20
    # Outputs of frozen nets computed once per stage instead of once per epoch
    # (engine/frozen_cache.py): the lesion maps of the training images in the cls and joint
    # stages (and the SR image in cls with train.input=lr), the validation lesion maps in cls.
    # Skipped, with a log line, when they would take more than cache_max_gb.
    cache_frozen: bool = True
    cache_max_gb: float = 2.0
    # Exponential moving average of the trained sub-nets' weights, updated after every applied
    # step (0 = off; e.g. 0.99), reset to the incoming weights at each stage's start. Validation
    # and the checkpoints' "model" use the average; last.pt / recovery.pt also keep the raw weights.
    ema_decay: float = 0.0


@dataclass
class EvaluationConfig:
    # What test.py grades unless told: "lr" (LR -> ISR -> grade, the system) or "hr" (the HR image).
    input: str = "lr"
    # Flip test-time augmentation in validation and test.py (--tta): grade probabilities averaged
    # over the four flips of the input (identity, left-right, top-bottom, both; engine/tta.py),
    # as predict.py --tta; segmentation and SR metrics stay those of the unflipped pass.
    tta: bool = False


@dataclass
class RunConfig:
    name: str = "demo"
    out_dir: str = "runs"
    device: str = "auto"
    seed: int = 103
    deterministic: bool = False
    # Speed switches (docs/BENCHMARKS.md). "auto" (engine/runtime.py): bf16 autocast and
    # channels-last where bf16 runs on hardware (CUDA; CPUs with AMX or AVX-512 BF16), the plain
    # fp32 path elsewhere (an AVX2-only CPU emulates bf16: 11.7x slower). true/false force it.
    amp: Any = "auto"  # autocast in amp_dtype (float16 adds a GradScaler)
    amp_dtype: str = "bfloat16"
    channels_last: Any = "auto"
    # torch.compile of the ISR and segmentation nets (the grader stays eager: Grad-CAM
    # differentiates its stage outputs, which compiled modules do not allow).
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str = "default"
    cudnn_benchmark: bool = True  # CUDA only; off when deterministic
    # Adam implementation: "auto" (fused on CUDA, torch's default elsewhere), "fused",
    # "foreach" or "for_loop".
    optimizer_impl: str = "auto"
    # Distributed runs (torchrun): BatchNorm statistics over all processes (CUDA only).
    sync_batchnorm: bool = False
    # torch CPU threads; 0 = every CPU this process may use (OMP_NUM_THREADS, else its affinity
    # mask capped by the cgroup quota: engine/runtime.py available_cpus).
    threads: int = 0
    # Checkpoints kept: per stage <stage>_best.pt (weights) and <stage>_last.pt (with optimiser
    # state while resuming needs it), plus checkpoints/recovery.pt inside an epoch; keep=N > 0 also
    # keeps each stage's N newest epochs as <stage>_epochNNN.pt (weights only).
    keep: int = 0


@dataclass
class Config:
    # The method recipe (engine/methods.py) applied over the preset; the fields below are resolved.
    method: str = "deepmt_dr"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    test: EvaluationConfig = field(default_factory=EvaluationConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    def stages_to_run(self) -> list[str]:
        return parse_stages(self.train.stage)


def parse_stages(text: str) -> list[str]:
    """``"all"`` -> every stage; ``"isr,cls"`` -> ``["isr", "cls"]`` (must be known, unique, in stage order)."""
    if text == "all":
        return list(STAGES)
    stages = [part.strip() for part in text.split(",")]
    allowed = ", ".join((*STAGES, "all"))
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ConfigError(
            f"train.stage must be one of {allowed} or a comma list of stages, got {text!r}"
        )
    if len(set(stages)) != len(stages) or stages != sorted(stages, key=STAGES.index):
        raise ConfigError(
            f"train.stage list must name each stage once, in the order {', '.join(STAGES)}; got {text!r}"
        )
    return stages


_YAML_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field annotation, converting ints to floats where expected."""
    hints = (
        typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    )
    if value is None:
        if type(None) in hints or annotation is Any:
            return None
        raise ConfigError(f"config key '{key}' may not be null")
    if annotation is Any:
        return value
    for hint in hints:
        origin = typing.get_origin(hint) or hint
        if origin is bool and isinstance(value, bool):
            return value
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is float and isinstance(value, str) and _YAML_FLOAT.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if origin is str and isinstance(value, str):
            return value
        if origin is list and isinstance(value, list):
            (item,) = typing.get_args(hint)
            return [_coerce(v, item, key) for v in value]
    raise ConfigError(f"config key '{key}' expects {annotation}, got {value!r}")


def _merge(target: Any, updates: dict, prefix: str = "") -> None:
    """Apply a nested dict of updates onto a dataclass instance, in place."""
    if not isinstance(updates, dict):
        raise ConfigError(
            f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {updates!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"unknown config key '{key}' (known: {', '.join(sorted(fields))})")
        current = getattr(target, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, key + ".")
        else:
            setattr(target, name, _coerce(value, hints[name], key))


def flat_keys(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a saved config's dotted keys, for comparing two."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def parse_override(text: str) -> dict:
    """``"a.b=3"`` -> ``{"a": {"b": 3}}``; the value is parsed as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    return _nested(key, yaml.safe_load(raw) if raw else "")


def _nested(key: str, value: Any) -> dict:
    """``("a.b", 3)`` -> ``{"a": {"b": 3}}``."""
    for part in reversed(key.split(".")):
        value = {part: value}
    return value


def default_preset(dataset: str | None = None) -> str:
    """demo.yaml for the embedded dataset; configs/<dataset>.yaml (else paper.yaml) for a public one."""
    if not dataset or dataset == "synthetic":
        return DEFAULT_PRESET
    preset = CONFIG_DIR / f"{dataset}.yaml"
    return str(preset if preset.is_file() else CONFIG_DIR / "paper.yaml")


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name]


def apply_method(config: Config, name: str) -> None:
    """Apply method ``name``'s overrides onto ``config`` in place and record the name.

    A method whose grader trains in one stage (``pool_grader_epochs``) gets ``train.cls.epochs +
    train.joint.epochs`` epochs, as many as DeepMT-DR's grader sees in its cls and joint stages.
    """
    method = get_method(name)
    if method.pool_grader_epochs:
        config.train.cls.epochs += config.train.joint.epochs
    for key, value in method.overrides.items():
        _merge(config, _nested(key, value))
    config.method = name


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    method: str | None = None,
) -> Config:
    """Defaults <- YAML file <- method recipe <- overrides, then :func:`validate`.

    The method is ``method``, else a ``method=NAME`` override, else the YAML's ``method`` key;
    none of them: the defaults (DeepMT-DR) as they are.
    """
    config = Config()
    loaded: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"config file {path} is not valid YAML: {error}") from error
        _merge(config, loaded)
    parsed = [parse_override(override) for override in overrides]
    named = [update["method"] for update in parsed if "method" in update]
    name = (
        method
        or (named[-1] if named else None)
        or (loaded.get("method") if isinstance(loaded, dict) else None)
    )
    if name:
        apply_method(config, name)
    for update in parsed:
        _merge(config, update)
    validate(config)
    return config


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved in a checkpoint or ``config.yaml``."""
    config = Config()
    _merge(config, values)
    validate(config)
    return config


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate(config: Config) -> None:
    """Reject impossible values early, naming the key."""
    data, model, train, loss = config.data, config.model, config.train, config.loss
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
    for stage in ("isr", "seg"):
        crop = getattr(train, stage).crop_size
        _require(
            crop is None or (crop >= 0 and crop % SEG_DIVISOR == 0),
            f"train.{stage}.crop_size {crop} must be 0 or a positive multiple of {SEG_DIVISOR}",
        )
    known = ("synthetic", *PUBLIC_DATASETS)
    _require(
        data.dataset in known,
        f"data.dataset must be one of {', '.join(known)}, got {data.dataset!r}",
    )
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
        data.prepare_workers >= 0, f"data.prepare_workers must be >= 0, got {data.prepare_workers}"
    )
    for name in ("n_train", "n_val", "n_test"):
        _require(
            getattr(data, name) > 0, f"data.{name} must be positive, got {getattr(data, name)}"
        )
    _require(data.num_classes >= 2, f"data.num_classes must be >= 2, got {data.num_classes}")
    _require(data.num_workers >= 0, f"data.num_workers must be >= 0, got {data.num_workers}")
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
    _require(
        model.isr in ISR_KINDS,
        f"model.isr must be one of {', '.join(ISR_KINDS)}, got {model.isr!r}",
    )
    _require(
        model.grader in GRADERS,
        f"model.grader must be one of {', '.join(GRADERS)}, got {model.grader!r}",
    )
    _require(
        model.cam_stages in CAM_STAGES,
        f"model.cam_stages must be one of {', '.join(CAM_STAGES)}, got {model.cam_stages!r}",
    )
    _require(
        model.grader_hidden > 0, f"model.grader_hidden must be positive, got {model.grader_hidden}"
    )
    _require(
        model.grader_head_activation in HEAD_ACTIVATIONS,
        f"model.grader_head_activation must be one of {', '.join(HEAD_ACTIVATIONS)}, got {model.grader_head_activation!r}",
    )
    _require(
        model.grader_head_activation == "relu" or model.grader != "chen_net",
        "model.grader_head_activation: the chen_net grader has its own head; leave it relu",
    )
    _require(
        model.imagenet_weights is None or bool(str(model.imagenet_weights).strip()),
        "model.imagenet_weights must be a .pth path, imagenet, or null; got an empty value",
    )
    _require(
        model.imagenet_weights is None or model.grader != "chen_net",
        "model.imagenet_weights: the chen_net grader has no ImageNet weights; leave it null",
    )
    _require(
        config.method in METHODS,
        f"method must be one of {', '.join(METHODS)}, got {config.method!r}",
    )
    _require(loss.pixel in ("mse", "l1"), f"loss.pixel must be mse or l1, got {loss.pixel!r}")
    _require(
        0 <= loss.label_smoothing < 1,
        f"loss.label_smoothing must be in [0, 1), got {loss.label_smoothing}",
    )
    _require(
        loss.ordinal_weight >= 0, f"loss.ordinal_weight must be >= 0, got {loss.ordinal_weight}"
    )
    _require(
        model.grade_decoding in GRADE_DECODINGS,
        f"model.grade_decoding must be one of {', '.join(GRADE_DECODINGS)}, got {model.grade_decoding!r}",
    )
    weights = loss.class_weights
    _require(
        weights in ("auto", "none")
        or (
            isinstance(weights, list)
            and len(weights) == data.num_classes
            and all(isinstance(w, (int, float)) and w >= 0 for w in weights)
        ),
        f"loss.class_weights must be 'auto', 'none' or {data.num_classes} non-negative numbers, got {weights!r}",
    )
    parse_stages(train.stage)
    _require(
        train.input in INPUTS,
        f"train.input must be one of {', '.join(INPUTS)}, got {train.input!r}",
    )
    _require(
        config.test.input in INPUTS,
        f"test.input must be one of {', '.join(INPUTS)}, got {config.test.input!r}",
    )
    for stage in STAGES:
        settings: StageConfig = getattr(train, stage)
        _require(settings.epochs >= 0, f"train.{stage}.epochs must be >= 0, got {settings.epochs}")
        _require(
            settings.batch_size > 0,
            f"train.{stage}.batch_size must be positive, got {settings.batch_size}",
        )
        _require(
            settings.schedule in ("step", "cosine", "constant"),
            f"train.{stage}.schedule must be step, cosine or constant, got {settings.schedule!r}",
        )
        _require(
            settings.max_steps >= 0,
            f"train.{stage}.max_steps must be >= 0, got {settings.max_steps}",
        )
        for lr in ("lr_isr", "lr_seg", "lr_cls", "lr_fusion"):
            _require(
                getattr(settings, lr) > 0,
                f"train.{stage}.{lr} must be positive, got {getattr(settings, lr)}",
            )
    _require(
        train.max_steps_per_epoch >= 0,
        f"train.max_steps_per_epoch must be >= 0, got {train.max_steps_per_epoch}",
    )
    _require(
        train.eval_every >= 0,
        f"train.eval_every must be >= 0 (0: never validate), got {train.eval_every}",
    )
    for key in ("checkpoint_every_steps", "checkpoint_every_minutes", "max_bad_steps"):
        _require(getattr(train, key) >= 0, f"train.{key} must be >= 0, got {getattr(train, key)}")
    _require(config.run.keep >= 0, f"run.keep must be >= 0, got {config.run.keep}")
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
    for switch in ("amp", "channels_last"):
        value = getattr(config.run, switch)
        _require(
            value == "auto" or isinstance(value, bool),
            f"run.{switch} must be auto, true or false, got {value!r}",
        )
    _require(config.run.threads >= 0, f"run.threads must be >= 0, got {config.run.threads}")
    _require(
        config.run.amp_dtype in ("bfloat16", "float16"),
        f"run.amp_dtype must be bfloat16 or float16, got {config.run.amp_dtype!r}",
    )
    _require(
        config.run.optimizer_impl in OPTIMIZER_IMPLS,
        f"run.optimizer_impl must be one of {', '.join(OPTIMIZER_IMPLS)}, got {config.run.optimizer_impl!r}",
    )
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
    _require(
        bool(config.run.name) and "/" not in config.run.name,
        f"run.name must be a plain folder name, got {config.run.name!r}",
    )


def save_config(config: Config, path: str | Path, note: str = "") -> None:
    """Write the resolved config as YAML; ``note`` (e.g. what ``auto`` became here) goes first as comments."""
    header = "".join(f"# {line}\n" for line in note.splitlines())
    Path(path).write_text(header + yaml.safe_dump(config.to_dict(), sort_keys=False))
