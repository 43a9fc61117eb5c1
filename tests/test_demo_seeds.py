"""bench/demo_seeds.py and its tables (evaluation/demo_tables.py): records, profile, ranges."""

from __future__ import annotations

import json
from pathlib import Path

from bench import demo_seeds
from evaluation.demo_tables import (
    demo_levers_table,
    demo_profile_table,
    demo_records,
    demo_seeds_table,
    demo_time_estimate,
)


def _record(seed: int, kernels: str, qwk: float, psnr: float, seconds: float) -> dict:
    stages = {
        stage: {"train": 10.0, "validate": 2.0, "epochs": 1}
        for stage in ("isr", "seg", "cls", "joint")
    }
    return {
        "seed": seed,
        "kernels": kernels,
        "precision": "run.amp=fp32",
        "train_seconds": seconds,
        "test_seconds": 5.0,
        "profile": {"render": 6.0, "cache": 4.0, "stages": stages},
        "test": {"qwk": qwk, "psnr_sr": psnr, "psnr_bicubic": 30.0, "accuracy": 0.5},
        "load_average_at_end": 1.5,
        "cpu": "Test CPU",
        "commit": "abcdef1234",
    }


def _write(root: Path, folder: str, record: dict) -> None:
    path = root / "docs/records/demo" / folder / f"seed{record['seed']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))


def test_seed_table_gives_min_median_max_per_cpu_kind(tmp_path):
    for seed, qwk, psnr, seconds in (
        (0, 0.80, 33.0, 300),
        (1, 0.70, 32.0, 360),
        (2, 0.76, 34.0, 330),
    ):
        _write(tmp_path, "avx2_test-cpu", _record(seed, "avx2", qwk, psnr, seconds))
    native = {**_record(0, "native", 0.9, 33.5, 200), "cpu_flags": ["avx2"]}
    _write(tmp_path, "native_test-cpu-avx2-only", native)
    table = demo_seeds_table(tmp_path)
    avx2 = next(line for line in table.splitlines() if "capped at AVX2" in line)
    assert "| 0, 1, 2 |" in avx2
    assert "0.700 / 0.760 / 0.800" in avx2  # never the best run alone
    assert "5.0 / 5.5 / 6.0" in avx2  # training minutes
    assert "2.00 / 3.00 / 4.00" in avx2  # SR minus bicubic
    native = next(line for line in table.splitlines() if "(AVX2 only), its own kernels" in line)
    assert "| 0.900 |" in native  # one seed: the value, no range


def test_profile_parts_add_up_to_the_wall_time(tmp_path):
    _write(tmp_path, "avx2_test-cpu", _record(0, "avx2", 0.8, 33.0, 100))
    table = demo_profile_table(tmp_path)
    lines = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()}
    assert "6 s (6%)" in lines["rendering the data"]
    assert "10 s (10%)" in lines["`cls` training"]
    # 100 - 6 render - 4 cache - 4 stages x 12 s = 42 s not in a named part.
    assert "42 s (42%)" in lines["start-up, checkpoints, the rest"]
    assert "**100 s**" in lines["**training, wall**"]


def test_profile_is_read_from_the_run_log_and_csv(tmp_path):
    log_csv = tmp_path / "log.csv"
    log_csv.write_text(
        "stage,epoch,seconds,val_seconds\nisr,1,20.5,5.5\nisr,2,19.5,4.5\ncls,1,30,\n"
    )
    profile = demo_seeds.stage_profile(log_csv)
    assert profile["isr"] == {"train": 30.0, "validate": 10.0, "epochs": 2}
    assert profile["cls"]["train"] == 30.0 and profile["cls"]["validate"] == 0.0
    text = (
        "rendered 1600 synthetic train samples in 12.5 s\nrendered 200 synthetic val samples in 2.5 s\n"
        "cached the frozen nets' outputs of 1600 HR images in 13.4 s\n"
    )
    assert demo_seeds.log_profile(text) == {"render": 15.0, "cache": 13.4}
    assert demo_seeds.cpu_slug("AMD EPYC 9R14 96-Core") == "amd-epyc-9r14-96-core"


def test_cpu_kind_names_the_widest_units():
    from evaluation.demo_tables import cpu_kind

    assert cpu_kind(["avx2", "avx512f", "avx512_bf16", "amx_bf16"]) == "AMX"
    assert cpu_kind(["avx2", "avx512f", "avx512_bf16"]) == "AVX-512 BF16"
    assert cpu_kind(["avx2", "avx512f"]) == "AVX-512"
    assert cpu_kind(["avx2"]) == "AVX2 only"
    assert cpu_kind([]) == "no AVX2"


def test_machine_label_names_the_family_where_the_record_has_it():
    from evaluation.demo_tables import machine_label

    old = {"cpu": "AMD EPYC", "cpu_flags": ["avx2"]}
    assert machine_label(old) == "AMD EPYC (AVX2 only)"
    new = {**old, "cpu_family": 26, "cpu_flags": ["avx2", "avx512f", "avx512_bf16"]}
    assert machine_label(new) == "AMD EPYC family 26 (AVX-512 BF16)"


def test_runner_records_a_seed_and_skips_it_next_time(tmp_path, tiny_overrides, capsys):
    records = tmp_path / "records"
    argv = [
        "--seeds",
        "3",
        "--out",
        str(tmp_path / "runs"),
        "--records",
        str(records),
        *tiny_overrides,
        # One epoch per stage: the record needs each stage's time, not the preset's schedule.
        *(f"train.{stage}.epochs=1" for stage in ("isr", "seg", "cls")),
    ]
    assert demo_seeds.main(argv) == 0
    (path,) = records.glob("native_*/seed3.json")
    record = json.loads(path.read_text())
    assert record["seed"] == 3 and record["kernels"] == "native"
    assert set(record["profile"]["stages"]) == {"isr", "seg", "cls", "joint"}
    assert record["profile"]["render"] > 0
    assert 0 < record["test"]["psnr_sr"] < 100 and -1 <= record["test"]["qwk"] <= 1
    assert record["train_seconds"] >= sum(
        part["train"] + part["validate"] for part in record["profile"]["stages"].values()
    )
    assert demo_records(tmp_path, "records")  # the table reader finds it
    assert demo_seeds.main(argv) == 0
    assert "skipped" in capsys.readouterr().out


def test_levers_table_lists_each_run_with_its_overrides(tmp_path):
    folder = tmp_path / "docs/records/demo_levers"
    folder.mkdir(parents=True)
    base = {
        "kernels": "avx2",
        "precision": "fp32",
        "val_qwk_cls_by_epoch": [0.5, 0.8],
        "val_qwk_joint_by_epoch": [0.6],
        "test": {"qwk": 0.61, "accuracy": 0.4, "psnr_sr": 33.0, "psnr_bicubic": 31.5},
        "train_wall_seconds": 600,
        "load": "idle",
        "cpu": "Test CPU",
        "date": "2026-12-07",
        "seed": 103,
    }
    (folder / "a.json").write_text(json.dumps({**base, "name": "old", "overrides": []}))
    lever = {
        **base,
        "name": "new",
        "overrides": ["model.grader_width=0.5"],
        "val_qwk_joint_by_epoch": [0.7, 0.8],
    }
    (folder / "b.json").write_text(json.dumps(lever))
    lines = demo_levers_table(tmp_path).splitlines()
    assert (
        lines[2].startswith("| old | 103 |") and "| none |" in lines[2]
    )  # the unchanged preset first
    assert "`model.grader_width=0.5`" in lines[3] and "| 0.70, 0.80 |" in lines[3]
    assert "| 10.0 (idle) |" in lines[2]


def test_kernel_cap_sets_avx2_where_nothing_else_is_asked_for():
    from engine.kernel_cap import AVX2_CAP, cap_kernels_at_avx2

    environ = {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    cap_kernels_at_avx2(environ)
    assert environ == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}
    assert set(AVX2_CAP) == set(environ)


def test_time_estimate_scales_each_part_of_the_measured_run(tmp_path):
    measured = _record(0, "native", 0.8, 33.0, 300.0)  # parts sum to 58 s; the rest is 242 s
    before = _record(0, "avx2", 0.8, 33.0, 150.0)
    after = json.loads(json.dumps(before))
    after["profile"]["stages"]["cls"]["train"] = 5.0  # cls training halved
    after["train_seconds"] = 145.0
    paths = []
    for name, record in (("measured", measured), ("before", before), ("after", after)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(record))
        paths.append(path.name)
    table = demo_time_estimate(tmp_path, *paths)
    cls_row = next(line for line in table.splitlines() if line.startswith("| `cls` training"))
    assert cls_row.endswith("| 10 s | 10 s | 5 s | 5 s |")
    # Every part unchanged but cls training: 300 s measured, minus the 5 s it saved.
    assert "**295 s** (4.9 min)" in table


def test_lever_record_reads_each_stages_validation_qwk_from_the_log(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "log.csv").write_text(
        "stage,epoch,val_qwk,seconds\nisr,1,,3\ncls,1,0.5,3\ncls,2,0.75,3\njoint,1,0.7,3\n"
    )
    record = {**_record(4, "avx2", 0.8, 33.0, 120.0), "overrides": ["a=1"], "cpu_family": 26}
    lever = demo_seeds.lever_record("trial", record, run_dir)
    assert lever["val_qwk_cls_by_epoch"] == [0.5, 0.75]
    assert lever["val_qwk_joint_by_epoch"] == [0.7]
    assert (lever["name"], lever["seed"], lever["kernels"]) == ("trial", 4, "capped at AVX2")
    assert lever["overrides"] == ["a=1"] and lever["cpu_family"] == 26
    # The levers table reads it like the hand-made records before it.
    (tmp_path / "docs/records/demo_levers").mkdir(parents=True)
    (tmp_path / "docs/records/demo_levers/trial_seed4.json").write_text(json.dumps(lever))
    table = demo_levers_table(tmp_path)
    assert "| trial | 4 | Test CPU family 26 (no AVX2), capped at AVX2" in table
    assert "| 0.50, 0.75 | 0.70 |" in table
