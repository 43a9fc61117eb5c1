"""The configuration's schema: one dataclass per section, whose defaults are the paper's
hyperparameters, and the error every bad key or value raises.

``engine/config.py`` loads and merges a config (defaults <- preset <- method <- overrides),
``engine/config_checks.py`` checks its values section by section.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STAGES = ("isr", "seg", "cls", "joint")
SEG_DIVISOR = 16  # the U-Net pools four times
INPUTS = ("lr", "hr")


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
    # How the preprocessing cache stores HR squares: jpeg (small) or png (lossless; data/prepare.py).
    cache_image_format: str = "jpeg"
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
    # The grader ResNet's channel widths as a multiple of the published ones (1: 64..512). Its
    # convolutions cost width squared: the CPU demo's 0.5 is what makes it fit 9 minutes on an
    # AVX2-only CPU (docs/BENCHMARKS.md, "The demo"). ImageNet weights need 1.
    grader_width: float = 1.0
    # The side the grader works at (0: the HR size). At HR 1024 a grader at 512 costs a quarter:
    # the SR image is block-averaged and the lesion maps, segmented at full resolution, are
    # max-pooled, so a microaneurysm of a few pixels still reaches it (models/deepmt_dr.py).
    grader_input_size: int = 0
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
    # The segmentation loss (models/losses.py): "dice_focal" (Dice + focal) or "dice_bce" (Dice +
    # BCE with lesion pixels weighted seg_pos_weight).
    seg_loss: str = "dice_focal"
    # The isr stage's segmentation loss (null: seg_loss). There it trains the ISR net too, through
    # the SR image: with dice_bce the 512 release's ISR net ended 0.5 dB above bicubic, with
    # dice_focal there 3.6 dB (same seed and pre-training; docs/RESULTS.md, issue 28).
    isr_seg_loss: str | None = None
    seg_pos_weight: float = 10.0
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
    # Validate every N epochs of this stage (and after its last); None takes train.eval_every.
    # A stage of many short epochs (idrid_1024's 300 seg epochs) would otherwise spend most of its
    # time validating.
    eval_every: int | None = None


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
    # Start from another run's weights (a checkpoint, a run folder or a release name, e.g. the
    # 512 release for the 1024 preset) instead of random / ImageNet initialisation; ignored when
    # resuming. "synthetic":
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
    # model.grade_decoding=thresholds: how many training images the thresholds are fitted on at each
    # validation, spread evenly over the training set (0: all of them). The fit is a full
    # evaluation pass; the CPU demo fits on 400 of its 1600 images to save a minute.
    threshold_images: int = 0
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
    # as predict.py --tta; lesion maps are averaged too (each flipped back), SR is the unflipped
    # view's (engine/inference.py).
    tta: bool = False
    # Segmentation of images larger than seg_tile pixels by overlapping seg_tile windows blended
    # over seg_tile_overlap pixels (models/tiling.py), in test.py and predict.py alike; 0: whole
    # images (memory grows with the image; a net trained on crops sees its crop size).
    seg_tile: int = 0
    seg_tile_overlap: int = 64


@dataclass
class RunConfig:
    name: str = "demo"
    out_dir: str = "runs"
    device: str = "auto"
    seed: int = 103
    deterministic: bool = False
    # Speed switches (docs/BENCHMARKS.md). "auto" (engine/runtime.py): bf16 autocast where bf16
    # runs on hardware (CUDA; CPUs with AMX or AVX-512 BF16), fp32 elsewhere (an AVX2-only CPU
    # emulates bf16: 11.7x slower); channels-last on CPUs and CUDA. true/false force it.
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
