"""How much of the ISR net's joint-stage gradient each loss term contributes (issue 25 item 2).

    python bench/gradient_shares.py --config configs/demo.yaml --steps 5
    python bench/gradient_shares.py --config configs/idrid_small.yaml --init pretrained_model/deepmt_dr_idrid_small.safetensors \\
        data.root=../shared/data/idrid
    python bench/gradient_shares.py --config configs/paper.yaml --hr 128 --init runs/gradient_shares/<demo warm-up>/checkpoints/last.pt \\
        model.isr_blocks=4 model.seg_width=0.25 model.grader_hidden=256     # the paper's loss weights, demo network

For ``--steps`` joint steps of the preset (its model, loss weights, joint batch size and learning
rates; ``--hr`` to shrink the images) the ISR net's loss is split into the weighted terms
``Trainer.joint_isr_terms`` returns (pixel, tv, grading = cls_weight x the grading loss through the
grader, seg_aware, task_aware), and each term's gradient on the ISR parameters is taken on its own.
Per term: the L2 norm, its share of the summed norms, its projection share (``<g_i, g> / |g|^2``
with ``g`` the total gradient: the shares sum to 1 and say how much of the step along ``g`` the
term makes), and the pairwise cosines. Each step then applies the total gradient (the sum of the
terms, what ``step_joint`` computes) and the grader's grading gradient with the preset's Adam, as
the joint stage does; ``--no-update`` keeps the weights fixed instead.

Starting weights (CAMs of a random grader mean nothing): ``--init warmup`` (default) trains this
preset's network briefly on the embedded dataset first, isr and cls stages only
(:data:`WARMUP`, a few CPU minutes at HR 128), in ``<run.out_dir>/warmup_<hash>`` (default
``runs/gradient_shares``), reused when finished; ``--init PATH`` loads a checkpoint of the same architecture; ``--init random``.
Data: the preset's dataset when its files are there (``data.root=...``), else the embedded
dataset at the preset's (or ``--hr``) size, said in the output. Autocast is off (``run.amp=false``):
the gradients are compared in float32.

Output: a Markdown report (the tables of docs/RESULTS.md, "Task-aware loss: gradient shares")
and, with ``--json PATH``, every number per step.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.machine import cpu_name
from engine.checkpoint import load_checkpoint, load_model_state
from engine.config import ConfigError, load_config, validate
from engine.pretrain import pretraining_config, pretraining_hash
from engine.trainer import Trainer, run_status

ROOT = Path(__file__).resolve().parents[1]
WARMUP_DIR = "runs/gradient_shares"
# The brief pre-training of --init warmup: configs/demo.yaml's schedule and learning rates on the
# embedded dataset, cut to the isr stage (ISR + segmentation) and the cls stage (grader + CAM fusion).
WARMUP = {
    "data.n_train": 800,
    "data.n_val": 64,
    "train.isr.epochs": 2,
    "train.seg.epochs": 0,
    "train.cls.epochs": 3,
    "train.joint.epochs": 0,
}
TERMS = ("pixel", "tv", "grading", "seg_aware", "task_aware")


# ----------------------------------------------------------------- the measurement
def term_gradients(
    terms: dict[str, torch.Tensor], params: list[torch.Tensor]
) -> dict[str, list[torch.Tensor]]:
    """Each scalar term's gradient on ``params``, one backward per term (graphs kept for the next);
    zeros where a term does not reach a parameter. The terms' gradients add up to their sum's."""
    grads = {}
    for name, term in terms.items():
        parts = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        grads[name] = [torch.zeros_like(p) if g is None else g for p, g in zip(params, parts)]
    return grads


def flatten(grads: list[torch.Tensor]) -> torch.Tensor:
    """One float64 vector ``[P]`` of a gradient given per parameter."""
    return torch.cat([g.detach().reshape(-1).double() for g in grads])


def share_stats(vectors: dict[str, torch.Tensor]) -> dict:
    """Norms, shares and cosines of per-term gradient vectors ``{name: [P]}``.

    ``norm``: L2 norm; ``norm_share``: norm / sum of the norms; ``projection_share``:
    ``<g_i, g> / |g|^2`` with ``g`` the sum of the vectors (sums to 1; NaN when ``g`` is 0);
    ``cosine``: ``{"a|b": cos(g_a, g_b)}`` for each pair (NaN when either is 0); ``total_norm``: |g|.
    """
    names = list(vectors)
    total = torch.stack([vectors[name] for name in names]).sum(dim=0)
    total_sq = float(total @ total)
    norms = {name: float(vectors[name].norm()) for name in names}
    norm_sum = sum(norms.values())
    cosines = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            denominator = norms[a] * norms[b]
            cosines[f"{a}|{b}"] = (
                float(vectors[a] @ vectors[b]) / denominator if denominator > 0 else math.nan
            )
    return {
        "norm": norms,
        "norm_share": {
            name: norms[name] / norm_sum if norm_sum > 0 else math.nan for name in names
        },
        "projection_share": {
            name: float(vectors[name] @ total) / total_sq if total_sq > 0 else math.nan
            for name in names
        },
        "cosine": cosines,
        "total_norm": math.sqrt(total_sq),
    }


def probe_step(trainer: Trainer, batch: dict, optimizers: dict | None) -> dict:
    """One joint step split by term: the ISR net's per-term gradients and their statistics; with
    ``optimizers`` the step is then applied (ISR: the terms' sum, grader: its grading gradient)."""
    model, weights = trainer.model, trainer.config.loss
    sr = model.isr(batch["lr"])
    result = model.grade_image(sr)
    grading, _ = trainer._grading_losses(result.grade_logits, batch["grade"])
    terms, losses = trainer.joint_isr_terms(batch, sr, result, grading)
    isr_params = [p for p in model.isr.parameters() if p.requires_grad]
    grads = term_gradients(terms, isr_params)
    stats = share_stats({name: flatten(parts) for name, parts in grads.items()})
    stats["loss"] = {
        "grading": float(grading.detach()),
        **{name: float(value.detach()) for name, value in losses.items()},
    }
    if optimizers is not None:
        grader_params = [p for p in model.grader.parameters() if p.requires_grad]
        grader_grads = torch.autograd.grad(weights.cls_weight * grading, grader_params)
        for index, param in enumerate(isr_params):
            param.grad = sum(parts[index] for parts in grads.values())
        for param, grad in zip(grader_params, grader_grads):
            param.grad = grad
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    return stats


def summarise(steps: list[dict]) -> dict:
    """Means (and standard deviations of the norms) over the steps."""

    def mean(values):
        values = [value for value in values if not math.isnan(value)]
        return sum(values) / len(values) if values else math.nan

    def sd(values):
        centre = mean(values)
        return (
            math.sqrt(mean([(value - centre) ** 2 for value in values])) if len(values) > 1 else 0.0
        )

    names = list(steps[0]["norm"])
    summary = {
        key: {name: mean([step[key][name] for step in steps]) for name in names}
        for key in ("norm", "norm_share", "projection_share")
    }
    summary["norm_sd"] = {name: sd([step["norm"][name] for step in steps]) for name in names}
    summary["cosine"] = {
        pair: mean([step["cosine"][pair] for step in steps]) for pair in steps[0]["cosine"]
    }
    summary["loss"] = {
        name: mean([step["loss"][name] for step in steps]) for name in steps[0]["loss"]
    }
    summary["total_norm"] = mean([step["total_norm"] for step in steps])
    return summary


# ----------------------------------------------------------------- set-up
def probe_config(args) -> tuple:
    """The preset with the probe's overrides, and a note on the data it will read."""
    overrides = [
        "run.amp=false",
        "run.channels_last=false",
        "data.num_workers=0",
        f"run.out_dir={WARMUP_DIR}",
        *args.overrides,
    ]
    if args.hr:
        overrides.append(f"data.hr_size={args.hr}")
    if args.batch:
        overrides.append(f"train.joint.batch_size={args.batch}")
    config = load_config(args.config, overrides)
    config.data.crop_size = min(config.data.crop_size, config.data.hr_size)
    note = f"{config.data.dataset} at HR {config.data.hr_size} / LR {config.data.hr_size // config.data.scale}"
    if config.data.dataset != "synthetic" and not (
        config.data.root and Path(config.data.root).is_dir()
    ):
        note = (
            f"embedded dataset at HR {config.data.hr_size} / LR {config.data.hr_size // config.data.scale} in place of "
            f"{config.data.dataset} (no data.root here)"
        )
        config.data.dataset, config.data.root = "synthetic", None
    if config.data.dataset == "synthetic":
        config.data.n_train = (
            args.steps * config.train.joint.batch_size
        )  # render only the images measured
    validate(config)
    return config, note


def warmup_checkpoint(config) -> Path:
    """--init warmup: the brief isr + cls pre-training of ``config``'s network (:data:`WARMUP`), at
    ``config``'s HR size, trained or reused; returns its last checkpoint."""
    pre = pretraining_config(config)
    pre.data.hr_size = config.data.hr_size
    pre.data.crop_size = min(pre.data.crop_size, pre.data.hr_size)
    pre.train.stage = "isr,cls"
    for key, value in WARMUP.items():
        section, name = key.split(".", 1)
        target = getattr(pre, section)
        if "." in name:
            stage, name = name.split(".")
            target = getattr(target, stage)
        setattr(target, name, value)
    pre.run.name = "warmup_" + pretraining_hash(pre)
    validate(pre)
    if run_status(pre) != "finished":
        print(
            f"warm-up: training {pre.run_dir} (isr {WARMUP['train.isr.epochs']} + cls {WARMUP['train.cls.epochs']} epochs, "
            f"{WARMUP['data.n_train']} embedded images)",
            file=sys.stderr,
            flush=True,
        )
        Trainer(pre, progress=None).fit(resume=True)
    return pre.run_dir / "checkpoints" / "last.pt"


def start_weights(trainer: Trainer, init: str) -> str:
    """Load the starting weights; returns what they are, for the report."""
    if init == "random":
        return "random initialisation"
    path = warmup_checkpoint(trainer.config) if init == "warmup" else Path(init)
    state = load_checkpoint(path)
    load_model_state(trainer.model, state["model"], path)
    stage = state.get("stage", "?")
    return f"{path} (after stage {stage}, epoch {state.get('epoch', '?')})"


# ----------------------------------------------------------------- report
def markdown(config, summary: dict, header: dict) -> str:
    loss = config.loss
    weight = {
        "pixel": f"{loss.pixel_weight:g} ({loss.pixel})",
        "tv": f"{loss.tv_weight:g}",
        "grading": f"{loss.cls_weight:g}",
        "seg_aware": f"{loss.seg_aware_weight:g}",
        "task_aware": f"{loss.task_aware_weight:g}",
    }
    if loss.ordinal_weight > 0:
        weight["grading"] += f" (CE + {loss.ordinal_weight:g} x ordinal)"
    names = list(summary["norm"])
    lines = [f"{key}: {value}" for key, value in header.items()]
    lines += [
        "",
        "| term | weight | loss (unweighted) | grad L2 norm (mean +- sd) | share of summed norms | projection share |",
        "|---|---|---|---|---|---|",
    ]
    unweighted = summary["loss"]
    for name in names:
        lines.append(
            f"| {name} | {weight[name]} | {unweighted.get(name, math.nan):.4g} | {summary['norm'][name]:.3g} +- "
            f"{summary['norm_sd'][name]:.2g} | {100 * summary['norm_share'][name]:.2f}% | {100 * summary['projection_share'][name]:.2f}% |"
        )
    lines.append(f"| total | | | {summary['total_norm']:.3g} | | |")
    lines += ["", "| cosine | " + " | ".join(names[1:]) + " |", "|---|" + "---|" * (len(names) - 1)]
    for i, a in enumerate(names[:-1]):
        cells = [
            "" if j <= i else f"{summary['cosine'][f'{a}|{b}']:+.3f}"
            for j, b in enumerate(names[1:], start=1)
        ]
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="preset YAML (configs/*.yaml)")
    parser.add_argument("--steps", type=int, default=5, help="joint steps measured")
    parser.add_argument("--hr", type=int, default=0, help="HR size (default: the preset's)")
    parser.add_argument(
        "--batch", type=int, default=0, help="joint batch size (default: the preset's)"
    )
    parser.add_argument(
        "--init", default="warmup", help="warmup (default), random, or a checkpoint path"
    )
    parser.add_argument(
        "--no-update", action="store_true", help="measure every step at the starting weights"
    )
    parser.add_argument("--json", type=Path, help="also write every number, per step, here")
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="further config overrides"
    )
    args = parser.parse_args()
    started = time.perf_counter()
    try:
        config, data_note = probe_config(args)
    except ConfigError as error:
        parser.error(str(error))
    trainer = Trainer(config)
    weights_note = start_weights(trainer, args.init)
    measure_started = time.perf_counter()
    optimizers = trainer._prepare_stage("joint")
    if not trainer._submodules(("isr",)):
        parser.error("the preset's model has no ISR net to measure (model.isr=bicubic)")
    trainer.crop_generator = torch.Generator().manual_seed(config.run.seed)
    loader = trainer.train_loader("joint")
    loader.sampler.set_epoch(0)
    steps = []
    for batch in loader:
        if len(steps) == args.steps:
            break
        with trainer.autocast():
            steps.append(
                probe_step(
                    trainer, trainer._batch(batch, "joint"), None if args.no_update else optimizers
                )
            )
    summary = summarise(steps)
    header = {
        "Command": "`python " + " ".join(shlex.quote(part) for part in sys.argv) + "`",
        "Preset": f"{args.config}; data: {data_note}; joint batch {config.train.joint.batch_size}, {len(steps)} steps"
        + (
            " at fixed weights"
            if args.no_update
            else f" (Adam, lr_isr {config.train.joint.lr_isr:g}, lr_cls {config.train.joint.lr_cls:g})"
        ),
        "Weights": weights_note,
        "Machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, fp32",
        "Wall time": f"{time.perf_counter() - measure_started:.0f} s measured, {time.perf_counter() - started:.0f} s in all",
    }
    print(markdown(config, summary, header))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"header": header, "summary": summary, "steps": steps}, indent=1)
        )


if __name__ == "__main__":
    main()
