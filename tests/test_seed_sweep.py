"""engine/seed_sweep.py (the task-aware loss sweep's runner) and the frozen sub-nets it relies on
(a learning rate of 0 freezes a sub-net in a stage)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY

from engine import stage_plan
from engine.builders import build_model
from engine.checkpoint import load_checkpoint
from engine.config import ConfigError, load_config
from engine.seed_sweep import SweepRunner, load_sweep

ROOT = Path(__file__).resolve().parents[1]

ARMS = (
    "  a: {method: deepmt_dr, overrides: [train.stage=joint, loss.task_aware_weight=0]}\n"
    "  b: {method: deepmt_dr, against: a, overrides: [train.stage=joint, loss.task_aware_weight=100]}\n"
)


def _sweep_file(tmp_path: Path, arms: str = ARMS, seeds: str = "[0, 1]") -> Path:
    overrides = ", ".join([*TINY, "train.eval_every=0", "train.joint_max_psnr_drop_db=null"])
    text = (
        f"preset: configs/demo.yaml\nseeds: {seeds}\noverrides: [{overrides}]\n"
        'base:\n  method: deepmt_dr\n  overrides: ["train.stage=isr,seg,cls"]\n'
        f"arms:\n{arms}"
    )
    (tmp_path / "sweep.yaml").write_text(text)
    return tmp_path / "sweep.yaml"


def test_sweep_spec_and_its_errors(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path))
    assert list(sweep.arms) == ["a", "b"] and sweep.references == {"b": "a"}
    assert sweep.seeds == (0, 1)
    with pytest.raises(ConfigError, match="against 'nope' is not an arm"):
        load_sweep(_sweep_file(tmp_path, "  a: {method: deepmt_dr, against: nope}\n"))
    with pytest.raises(ConfigError, match="seeds must be a list of integers"):
        load_sweep(_sweep_file(tmp_path, seeds="zero"))
    (tmp_path / "bad.yaml").write_text("preset: configs/demo.yaml\n")
    with pytest.raises(ConfigError, match="bad.yaml: missing 'base'"):
        load_sweep(tmp_path / "bad.yaml")


def test_arms_of_a_seed_start_from_one_base_run_and_leave_records(tmp_path):
    sweep = load_sweep(_sweep_file(tmp_path))
    records = tmp_path / "records"
    runner = SweepRunner(sweep, tmp_path / "runs", records)
    first = runner.run_one("a", 0)
    second = runner.run_one("b", 0)
    base_dir = tmp_path / "runs" / "seed0" / "base"
    assert (base_dir / "checkpoints" / "done").is_file()
    assert second["base_wall_seconds"] < first["base_wall_seconds"]  # trained once, then reused
    init_a = load_checkpoint(tmp_path / "runs" / "seed0" / "init_a.pt")
    init_b = load_checkpoint(tmp_path / "runs" / "seed0" / "init_b.pt")
    for key, value in init_a["model"].items():  # paired: both arms start from the same weights
        assert torch.equal(value, init_b["model"][key]), key
    assert first["config_hash"] != second["config_hash"]
    assert len(first["base_weights_sha256"]) == 64  # the table pairs arms on it
    assert first["base_weights_sha256"] == second["base_weights_sha256"]
    meta = json.loads((records / "b" / "seed0.json").read_text())
    assert meta["seed"] == 0 and meta["arm"] == "b"
    assert set(meta["metrics"]) >= {"qwk", "psnr", "psnr_bicubic", "psnr_lesion"}
    assert {"cam_pearson", "task_gap"} <= set(meta["mechanism"])
    rows = (records / "a" / "seed0.csv").read_text().splitlines()
    assert rows[0].startswith("id,grade,predicted,p0") and len(rows) == 1 + 4  # 4 test images
    assert runner.pending(["a", "b"], [0, 1]) == [(1, "a"), (1, "b")]


def test_a_zero_learning_rate_freezes_that_sub_net_in_the_stage():
    config = load_config(None, [*TINY, "train.joint.lr_cls=0"])
    model = build_model(config)
    trained = stage_plan.freeze_for(model, "joint", config)
    assert list(trained) == ["isr"]
    assert model.isr.training and not model.grader.training  # BatchNorm statistics kept, no dropout
    assert not any(p.requires_grad for p in model.grader.parameters())
    both = stage_plan.freeze_for(model, "joint", load_config(None, TINY))
    assert sorted(both) == ["grader", "isr"]
    isr_frozen = load_config(None, [*TINY, "train.joint.lr_isr=0"])
    assert stage_plan.stage_trainables(isr_frozen, "joint") == ("grader",)
    with pytest.raises(ConfigError, match="lr_cls must be >= 0"):
        load_config(None, [*TINY, "train.joint.lr_cls=-1"])


@pytest.mark.parametrize("override, frozen", [("lr_cls", "grader"), ("lr_isr", "isr")])
def test_a_joint_stage_with_a_frozen_sub_net_trains_and_leaves_it_unchanged(
    tmp_path, override, frozen
):
    """The sweep's frozen_w* and isr_frozen arms: the joint step runs (a frozen grader once made
    autograd.grad fail on an empty parameter list) and the frozen net's weights do not move."""
    from engine.trainer import Trainer

    config = load_config(
        None,
        [
            *TINY,
            "train.stage=joint",
            "train.joint.epochs=1",
            "train.eval_every=0",
            f"train.joint.{override}=0",
            f"run.out_dir={tmp_path}",
            f"run.name={frozen}",
        ],
    )
    trainer = Trainer(config)
    start = {k: v.clone() for k, v in getattr(trainer.model, frozen).state_dict().items()}
    moving = "isr" if frozen == "grader" else "grader"
    other = {k: v.clone() for k, v in getattr(trainer.model, moving).state_dict().items()}
    trainer.fit()
    after = getattr(trainer.model, frozen).state_dict()
    assert all(torch.equal(start[k], after[k]) for k in start)
    moved = getattr(trainer.model, moving).state_dict()
    assert any(not torch.equal(other[k], moved[k]) for k in other)


def _sweep_records(tmp_path, qwk: dict, psnr=None, pearson=None, task_gap: float = -0.1) -> None:
    """Sweep records under ``tmp_path/records``: per arm, one per seed with these QWKs; PSNR and
    CAM Pearson per arm (30 dB and 0.5 when not given)."""
    for arm, values in qwk.items():
        folder = tmp_path / "records" / arm
        folder.mkdir(parents=True, exist_ok=True)
        for seed, value in enumerate(values):
            record = {
                "arm": arm,
                "seed": seed,
                "commit": "abcdef0",
                "cpu": "test CPU",
                "wall_seconds": 60.0,
                "metrics": {
                    "qwk": value,
                    "psnr": (psnr or {}).get(arm, 30.0),
                    "psnr_bicubic": 29.0,
                    "psnr_lesion": 28.0,
                },
                "mechanism": {"cam_pearson": (pearson or {}).get(arm, 0.5), "task_gap": task_gap},
            }
            (folder / f"seed{seed}.json").write_text(json.dumps(record))


def test_sweep_table_pairs_arms_by_seed(tmp_path):
    from scipy import stats

    from evaluation.results_tables import sweep_table

    _sweep_file(tmp_path)
    _sweep_records(tmp_path, {"a": [0.50, 0.60, 0.55], "b": [0.53, 0.61, 0.60]})
    table = sweep_table(tmp_path, "sweep.yaml", "records")
    deltas = [0.03, 0.01, 0.05]
    half = stats.t.ppf(0.975, 2) * stats.tstd(deltas) / 3**0.5
    row = next(line for line in table.splitlines() if line.startswith("| b |"))
    assert f"+0.030 ({0.03 - half:+.3f}, {0.03 + half:+.3f}), 3 seeds" in row
    assert "| a | 3 | 0.550 | — | — |" in table and "6 runs recorded" in table
    # A seed whose two arms started from different base weights is not a pair.
    for arm, digest in (("a", "1" * 64), ("b", "2" * 64)):
        path = tmp_path / "records" / arm / "seed2.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "base_weights_sha256": digest}))
    row = next(
        line
        for line in sweep_table(tmp_path, "sweep.yaml", "records").splitlines()
        if line.startswith("| b |")
    )
    assert "+0.020 (" in row and "2 seeds" in row


def test_weights_digest_sees_every_value_name_and_dtype():
    from engine.checkpoint import weights_digest

    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.zeros(2)}
    digest = weights_digest(state)
    assert digest == weights_digest({key: value.clone() for key, value in reversed(state.items())})
    changed = {**state, "b.bias": torch.tensor([0.0, 1e-7])}
    renamed = {"a.weight": state["a.weight"], "c.bias": state["b.bias"]}
    double = {**state, "b.bias": state["b.bias"].double()}
    assert len({digest, *(weights_digest(s) for s in (changed, renamed, double))}) == 4


def test_sweep_answer_reads_the_paired_differences_in_words(tmp_path):
    from evaluation.sweep_tables import sweep_answer

    def answer(b_qwk: list[float], b_psnr: float) -> str:  # arm a: weight 0, b: weight 100
        qwk = {"a": [0.50, 0.60, 0.55], "b": b_qwk}
        psnr, pearson = {"a": 30, "b": b_psnr}, {"a": 0.3, "b": 0.6}
        _sweep_records(tmp_path, qwk, psnr, pearson, task_gap=0.2)
        return sweep_answer(tmp_path, "sweep.yaml", "records")

    _sweep_file(tmp_path, seeds="[0, 1, 2]")
    text = answer([0.53, 0.61, 0.60], 28)
    assert text.startswith("**The task-aware loss sweep, all 3 paired seeds:**")
    assert "the best, `b`, by +0.030 (" in text and "PSNR cost of 2.00 dB" in text
    assert "no measurable effect on grading" in text  # (-0.020, +0.080) contains 0
    assert "Pearson 0.30 at weight 0, 0.60 at weight 100" in text
    assert "From weight 100 on, the SR image falls under bicubic" in text
    # Every seed better by about the same: the interval leaves 0 and the words say so.
    text = answer([0.55, 0.66, 0.60], 30)
    assert "It **helps** grading in `b`" in text and "stays above bicubic" in text
    _sweep_file(tmp_path, seeds="[0, 1, 2, 3, 4]")  # five asked for, three recorded
    assert "has 3 of its 5 paired seeds" in sweep_answer(tmp_path, "sweep.yaml", "records")


def test_runners_side_by_side_skip_what_the_other_recorded_meanwhile(tmp_path, monkeypatch):
    """run_pending looks at the records again before each run: an (arm, seed) that another
    runner recorded after this one listed its work is skipped, not trained twice."""
    sweep = load_sweep(_sweep_file(tmp_path))
    records = tmp_path / "records"
    runner = SweepRunner(sweep, tmp_path / "runs", records)
    ran = []

    def fake_run_one(arm, seed):
        ran.append((arm, seed))
        if (arm, seed) == ("a", 0):  # meanwhile, another runner records b/seed0
            (records / "b").mkdir(parents=True)
            (records / "b" / "seed0.csv").write_text("id\n")
            (records / "b" / "seed0.json").write_text("{}")
        return {"arm": arm, "seed": seed}

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    done = [(arm, seed) for arm, seed, _ in runner.run_pending(["a", "b"], [0, 1])]
    assert ran == done == [("a", 0), ("a", 1), ("b", 1)]
