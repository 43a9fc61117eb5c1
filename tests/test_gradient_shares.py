"""bench/gradient_shares.py: per-term gradients of the joint step add up, and the CLI reports them."""

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.gradient_shares import flatten, share_stats, term_gradients
from tests.test_trainer_steps import _batch, _trainer

ROOT = Path(__file__).resolve().parents[1]


def test_per_term_gradients_add_up_to_the_gradient_of_the_sum():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1))
    unused = nn.Linear(2, 2)  # a parameter no term reaches: zeros, not None
    params = [*net.parameters(), *unused.parameters()]
    x, target = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    out = net(x)
    terms = {
        "mse": 3.0 * (out - target).pow(2).mean(),
        "l1": (out - target).abs().mean(),
        "mean": out.mean(),
    }
    terms["mse_again"] = 2 * terms["mse"]
    grads = term_gradients(terms, params)
    whole = torch.autograd.grad(sum(terms.values()), params, allow_unused=True)
    for index, param in enumerate(params):
        expected = torch.zeros_like(param) if whole[index] is None else whole[index]
        torch.testing.assert_close(
            sum(parts[index] for parts in grads.values()), expected, rtol=1e-5, atol=1e-7
        )
    stats = share_stats({name: flatten(parts) for name, parts in grads.items()})
    vectors = {name: flatten(parts) for name, parts in grads.items()}
    whole_vector = flatten([torch.zeros_like(p) if g is None else g for p, g in zip(params, whole)])
    assert stats["total_norm"] == pytest.approx(float(whole_vector.norm()), rel=1e-6)
    assert sum(stats["projection_share"].values()) == pytest.approx(1.0, abs=1e-9)
    assert sum(stats["norm_share"].values()) == pytest.approx(1.0, abs=1e-9)
    for name, vector in vectors.items():
        assert stats["norm"][name] == pytest.approx(float(vector.norm()))
    assert stats["norm"]["mse_again"] == pytest.approx(2 * stats["norm"]["mse"])
    assert stats["cosine"]["mse|mse_again"] == pytest.approx(1.0)
    assert set(stats["cosine"]) == {
        "mse|l1",
        "mse|mean",
        "mse|mse_again",
        "l1|mean",
        "l1|mse_again",
        "mean|mse_again",
    }


def test_a_zero_gradient_has_nan_cosines_and_no_share():
    stats = share_stats(
        {
            "a": torch.tensor([1.0, 0.0], dtype=torch.float64),
            "b": torch.zeros(2, dtype=torch.float64),
        }
    )
    assert math.isnan(stats["cosine"]["a|b"])
    assert stats["norm_share"] == {"a": 1.0, "b": 0.0} and stats["projection_share"] == {
        "a": 1.0,
        "b": 0.0,
    }


def test_the_joint_terms_gradients_add_up_to_the_joint_steps_isr_gradient(tmp_path):
    """The probe measures what trains: its terms' gradients sum to ``step_joint``'s ISR gradient
    (same weights and BatchNorm statistics; dropout off so both forwards are the same)."""
    trainer = _trainer(tmp_path)
    trainer._prepare_stage("joint")
    batch = _batch()
    start = copy.deepcopy(trainer.model.state_dict())
    trainer.step_joint(batch)
    isr_params = list(trainer.model.isr.parameters())
    expected = [param.grad.clone() for param in isr_params]
    trainer.model.zero_grad(set_to_none=True)
    trainer.model.load_state_dict(start)
    model = trainer.model
    sr = model.isr(batch["lr"])
    result = model.grade_image(sr)
    grading, _ = trainer._grading_losses(result.grade_logits, batch["grade"])
    terms, _ = trainer.joint_isr_terms(batch, sr, result, grading)
    assert list(terms) == ["pixel", "tv", "grading", "seg_aware", "task_aware"]
    grads = term_gradients(terms, isr_params)
    # Float32 sums in another order: equal to 1e-5 of each parameter's largest gradient entry.
    for index, want in enumerate(expected):
        torch.testing.assert_close(
            sum(parts[index] for parts in grads.values()),
            want,
            rtol=1e-4,
            atol=1e-5 * float(want.abs().max()),
        )
    got = flatten([sum(parts[index] for parts in grads.values()) for index in range(len(expected))])
    # Each weight gradient sums ~10^5 float32 products (batch x pixels): rounding in another
    # order reaches about sqrt(10^5) x 6e-8 = 2e-5 of the norm; a missing or doubled term is ~1.
    assert float((got - flatten(expected)).norm()) <= 1e-4 * float(flatten(expected).norm())
    assert all(float(flatten(parts).norm()) > 0 for parts in grads.values())


def test_the_cli_prints_the_tables_and_writes_every_step(tmp_path):
    out = tmp_path / "shares.json"
    command = [
        sys.executable,
        "bench/gradient_shares.py",
        "--config",
        "configs/demo.yaml",
        "--steps",
        "2",
        "--hr",
        "64",
        "--batch",
        "2",
        "--init",
        "random",
        "--json",
        str(out),
        "model.isr_channels=8",
        "model.isr_blocks=1",
        "model.grader_hidden=32",
        "run.threads=1",
        f"run.out_dir={tmp_path}",
    ]
    text = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    for row in (
        "| pixel | 10 (l1) |",
        "| grading | 1 (CE + 0.5 x ordinal) |",  # the demo preset's ordinal term
        "| seg_aware | 1 |",
        "| task_aware | 10 |",
        "| cosine |",
        "Machine: ",
    ):
        assert row in text, row
    report = json.loads(out.read_text())
    assert len(report["steps"]) == 2
    assert sum(report["summary"]["projection_share"].values()) == pytest.approx(1.0, abs=1e-6)
