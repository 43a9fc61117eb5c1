"""Saliency methods for a :class:`~saliency.adapters.SaliencyModel`, batched, per-sample targets.

Every method maps ``image [N,3,H,W]`` in [0,1] and ``target [N]`` (score column per sample) to a
**raw map** ``[N,1,H,W]`` at the input resolution, on the image's device, detached:

=================  =======================================================  ==========
method             raw map                                                  sign
=================  =======================================================  ==========
gradcam            ReLU(sum_k mean(dS/dA_k) A_k), bilinear upsample          >= 0
                   (``models/cam.py``'s reduction); its display map
                   equals pytorch-grad-cam's ``GradCAM``
gradcampp          Grad-CAM++ weights sum(alpha * ReLU(dS/dA)), alpha as in  >= 0
                   pytorch-grad-cam (eq. 19, eps 1e-6), then as Grad-CAM
guided_backprop    max over colour channels of |guided gradient| (Captum)   >= 0
guided_gradcam     max over colour channels of |guided gradient x Grad-CAM|  >= 0
                   (Captum, bilinear upsampling)
ig                 integrated gradients from a black image (Captum,        signed
                   Gauss-Legendre), summed over colour channels: the map
                   sums to S(image) - S(black) (completeness)
smoothgrad         max over colour channels of the mean |gradient| over     >= 0
                   noisy copies (Captum NoiseTunnel, seeded)
occlusion          mean drop of the target score when a black window        signed
                   covering the pixel replaces the image (Captum)
=================  =======================================================  ==========

Signed maps are positive where the pixel supports the target score. :func:`display_map` turns
any raw map into [0,1]: the positive part, then per-image min-max (pytorch-grad-cam's convention);
a map that is numerically flat (range below 1e-5 of its maximum, e.g. all zeros) becomes all
zeros, never NaN. Overlays and metrics use display maps; ``.npy`` files keep raw maps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from captum.attr import (
    GuidedBackprop,
    GuidedGradCam,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn
from torch.nn import functional as F

from models.cam import weighted_activation_map
from saliency.adapters import SaliencyError, SaliencyModel

GRADCAM_PP_EPS = 1e-6  # pytorch-grad-cam's eps in the Grad-CAM++ alpha denominator
FLAT_RTOL = 1e-5  # a map whose range is below this fraction of its maximum is flat -> zeros
OCCLUSION_ROUNDING_RTOL = (
    1e-5  # occlusion maps varying less than this fraction of the scores are flat
)


@dataclass(frozen=True)
class Options:
    """Method settings. Fractions of the image side make occlusion cost the same at any size.

    ig_steps: Gauss-Legendre nodes of integrated gradients, doubled for the images whose
    completeness error exceeds ig_tolerance, up to ig_max_steps. smoothgrad_samples / smoothgrad_noise:
    noisy copies and their std in input units (inputs span [0,1]; the SmoothGrad paper uses 10-20 %
    of the range). occlusion_window / occlusion_stride: window side and stride as fractions of the
    image side. batch_pixels: pixels per forward inside IG and SmoothGrad (memory; 32 images of
    128x128 by default, 2 of 512x512; IG never takes fewer than the batch, as Captum requires).
    seed: SmoothGrad's noise.
    """

    ig_steps: int = 32
    ig_max_steps: int = 256
    ig_tolerance: float = 0.01
    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.15
    occlusion_window: float = 1 / 8
    occlusion_stride: float = 1 / 16
    batch_pixels: int = 32 * 128 * 128
    seed: int = 0


def display_map(raw: torch.Tensor) -> torch.Tensor:
    """Raw ``[N,1,H,W]`` -> [0,1]: positive part, then per-image ``(x - min) / (max - min)``.

    Flat maps (range at most 1e-5 of the maximum: all zero, constant, all negative) -> zeros.
    Dividing by the range itself, not range + 1e-7 as ``models.cam.minmax_normalise`` does, keeps
    the map independent of the score's scale: that is what pytorch-grad-cam computes (its two
    normalisations make the eps relative); an absolute eps shifts maps of small magnitude by
    1e-7 / range (1e-4 for a 5-class ResNet-18 at layer3).
    """
    positive = F.relu(raw.float())
    flat = positive.flatten(1)
    low = flat.amin(dim=1).view(-1, 1, 1, 1)
    high = flat.amax(dim=1).view(-1, 1, 1, 1)
    span = high - low
    is_flat = span <= FLAT_RTOL * high
    normalised = (positive - low) / torch.where(is_flat, torch.ones_like(span), span)
    return torch.where(is_flat, torch.zeros_like(normalised), normalised)


def layer_activation_and_gradient(
    model: nn.Module, layer: nn.Module, image: torch.Tensor, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer``'s output and the gradient of each sample's target score w.r.t. it, one backward.

    The batch's summed target score has per-sample gradients (samples are independent in eval mode).
    """
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            scores = model(image.detach().requires_grad_(True))
            score = scores.gather(1, target.view(-1, 1)).sum()
            (gradient,) = torch.autograd.grad(score, captured[-1])
    finally:
        handle.remove()
    return captured[-1].detach(), gradient.detach()


def _grad_input(image: torch.Tensor) -> torch.Tensor:
    """A leaf copy that requires grad (Captum warns when it has to switch gradients on itself)."""
    return image.detach().clone().requires_grad_(True)


@contextmanager
def _quiet_relu_hooks():
    """Silence Captum's notice that guided backprop hooks the ReLU modules (it removes them after)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        yield


def _images_per_forward(image: torch.Tensor, options: Options) -> int:
    return max(1, options.batch_pixels // (image.shape[-2] * image.shape[-1]))


def _upsample(cam: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    return F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)


def gradcam(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
    options: Options,
) -> torch.Tensor:
    activation, gradient = layer_activation_and_gradient(model, layer, image, target)
    return _upsample(weighted_activation_map(activation, gradient), image)


def gradcam_plus_plus(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
    options: Options,
) -> torch.Tensor:
    activation, gradient = layer_activation_and_gradient(model, layer, image, target)
    squared = gradient.square()
    activation_sum = activation.sum(dim=(2, 3), keepdim=True)
    denominator = 2 * squared + activation_sum * squared * gradient + GRADCAM_PP_EPS
    positive = gradient > 0  # ReLU(dS/dA) zeroes every other alpha anyway
    alpha = torch.where(positive, squared / torch.where(denominator == 0, 1.0, denominator), 0.0)
    weights = (alpha * F.relu(gradient)).sum(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    return _upsample(cam, image)


def guided_backprop(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
    options: Options,
) -> torch.Tensor:
    with _quiet_relu_hooks():
        attribution = GuidedBackprop(model).attribute(_grad_input(image), target=target)
    return attribution.abs().amax(dim=1, keepdim=True).detach()


def guided_gradcam(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
    options: Options,
) -> torch.Tensor:
    with _quiet_relu_hooks():
        attribution = GuidedGradCam(model, layer).attribute(
            _grad_input(image), target=target, interpolate_mode="bilinear"
        )
    return attribution.abs().amax(dim=1, keepdim=True).detach()


def ig_completeness_error(
    model: SaliencyModel, image: torch.Tensor, target: torch.Tensor, raw: torch.Tensor
) -> torch.Tensor:
    """``[N]`` relative completeness error of an IG map: ``|sum(raw) - (S(x) - S(black))| / |S(x) - S(black)|``.

    The denominator is floored at 1e-3 so that a score the baseline does not change reads as an
    absolute error instead of dividing by zero.
    """
    with torch.no_grad():
        scores = model(torch.cat([image, torch.zeros_like(image)]))
    per_image = scores.gather(1, target.repeat(2).view(-1, 1)).view(2, -1)
    difference = per_image[0] - per_image[1]
    return (raw.sum(dim=(1, 2, 3)) - difference).abs() / difference.abs().clamp_min(1e-3)


def integrated_gradients(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
    options: Options,
) -> torch.Tensor:
    """IG with ``ig_steps`` nodes; images whose completeness error exceeds ``ig_tolerance`` are
    recomputed with twice the nodes, up to ``ig_max_steps`` (ReLU nets are not smooth along the path)."""
    ig = IntegratedGradients(model)
    raw = torch.zeros_like(image[:, :1])
    redo = torch.ones(image.shape[0], dtype=torch.bool, device=image.device)
    steps = options.ig_steps
    while True:
        subset, subset_target = image[redo], target[redo]
        attribution = ig.attribute(
            _grad_input(subset),
            baselines=torch.zeros_like(subset),
            target=subset_target,
            n_steps=steps,
            method="gausslegendre",
            internal_batch_size=max(_images_per_forward(subset, options), subset.shape[0]),
        )
        raw[redo] = attribution.sum(dim=1, keepdim=True).detach()
        if 2 * steps > options.ig_max_steps:
            return raw
        error = ig_completeness_error(model, subset, subset_target, raw[redo])
        if bool((error <= options.ig_tolerance).all()):
            return raw
        redo[redo.clone()] = error > options.ig_tolerance
        steps *= 2


@contextmanager
def _seeded(seed: int, device: torch.device):
    """Fix the global RNG inside the block (Captum draws SmoothGrad's noise from it), restore it after."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def smoothgrad(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
    options: Options,
) -> torch.Tensor:
    with _seeded(options.seed, image.device):
        attribution = NoiseTunnel(Saliency(model)).attribute(
            _grad_input(image),
            nt_type="smoothgrad",
            nt_samples=options.smoothgrad_samples,
            nt_samples_batch_size=max(1, _images_per_forward(image, options) // image.shape[0]),
            stdevs=options.smoothgrad_noise,
            target=target,
            abs=True,
        )
    return attribution.amax(dim=1, keepdim=True).detach()


def occlusion_geometry(
    height: int, width: int, options: Options
) -> tuple[tuple[int, int], tuple[int, int]]:
    """(window, stride) in pixels for an image of that size; at least 1 px, stride <= window."""
    window = tuple(max(1, round(side * options.occlusion_window)) for side in (height, width))
    stride = tuple(
        min(w, max(1, round(side * options.occlusion_stride)))
        for w, side in zip(window, (height, width))
    )
    return window, stride


def occlusion(
    model: SaliencyModel,
    image: torch.Tensor,
    target: torch.Tensor,
    layer: nn.Module,
    options: Options,
) -> torch.Tensor:
    """Captum occlusion; a map whose variation is below float32 rounding of the scores (range at most
    1e-5 of the largest score magnitude) is replaced by its mean, so that rounding is not shown as evidence."""
    window, stride = occlusion_geometry(*image.shape[-2:], options)
    with torch.no_grad():
        score_scale = model(image).abs().amax(dim=1).view(-1, 1, 1, 1)
        attribution = Occlusion(
            model
        ).attribute(
            image.detach(),
            sliding_window_shapes=(image.shape[1], *window),
            strides=(image.shape[1], *stride),
            baselines=0.0,
            target=target,
            perturbations_per_eval=1,  # same batch size as the unperturbed forward: a no-op window gives exactly 0
        )
    raw = attribution.mean(dim=1, keepdim=True)
    flat = raw.flatten(1)
    span = (flat.amax(dim=1) - flat.amin(dim=1)).view(-1, 1, 1, 1)
    rounding = span <= OCCLUSION_ROUNDING_RTOL * score_scale
    return torch.where(rounding, flat.mean(dim=1).view(-1, 1, 1, 1).expand_as(raw), raw).detach()


Method = Callable[[SaliencyModel, torch.Tensor, torch.Tensor, nn.Module, Options], torch.Tensor]
METHODS: dict[str, Method] = {
    "gradcam": gradcam,
    "gradcampp": gradcam_plus_plus,
    "guided_backprop": guided_backprop,
    "guided_gradcam": guided_gradcam,
    "ig": integrated_gradients,
    "smoothgrad": smoothgrad,
    "occlusion": occlusion,
}
TITLES = {
    "gradcam": "Grad-CAM",
    "gradcampp": "Grad-CAM++",
    "guided_backprop": "guided backprop",
    "guided_gradcam": "guided Grad-CAM",
    "ig": "integrated gradients",
    "smoothgrad": "SmoothGrad",
    "occlusion": "occlusion",
}
PIXEL_METHODS = frozenset(
    {"guided_backprop", "guided_gradcam", "ig", "smoothgrad"}
)  # per-pixel detail
ALIASES = {"gradcam++": "gradcampp", "gbp": "guided_backprop", "integrated_gradients": "ig"}


def parse_methods(text: str) -> list[str]:
    """``"gradcam,ig"`` or ``"all"`` -> canonical names, in the given order, without repeats."""
    names = (
        list(METHODS)
        if text.strip() == "all"
        else [part.strip() for part in text.split(",") if part.strip()]
    )
    resolved = []
    for name in names:
        canonical = ALIASES.get(name, name)
        if canonical not in METHODS:
            raise SaliencyError(
                f"unknown saliency method {name!r}; valid: {', '.join(METHODS)} (or all)"
            )
        if canonical not in resolved:
            resolved.append(canonical)
    if not resolved:
        raise SaliencyError(f"no saliency method given; valid: {', '.join(METHODS)} (or all)")
    return resolved


def raw_saliency(
    model: SaliencyModel,
    image: torch.Tensor,
    method: str,
    target: torch.Tensor,
    layer: str | None = None,
    options: Options | None = None,
) -> torch.Tensor:
    """Raw map ``[N,1,H,W]`` of ``method`` for each image's ``target`` column (see module table).

    ``layer`` (a module name of the model, default its deepest stage) is used by the Grad-CAM
    family only. The model must be in eval mode (it is, inside a :class:`SaliencyModel`).
    """
    if method not in METHODS:
        raise SaliencyError(f"unknown saliency method {method!r}; valid: {', '.join(METHODS)}")
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"expected an image batch [N,3,H,W], got {tuple(image.shape)}")
    if target.shape != (image.shape[0],):
        raise ValueError(
            f"expected one target per image ({image.shape[0]}), got shape {tuple(target.shape)}"
        )
    module = model.layer(layer or model.default_layer)
    return METHODS[method](
        model, image, target.to(image.device).long(), module, options or Options()
    )
