"""run.amp / run.channels_last "auto" and run.threads: chosen from what the machine offers
(CPU flags mocked), recorded in the run log and config.yaml."""

import logging

import pytest
import torch

from engine import runtime
from engine.config import ConfigError, load_config
from engine.runtime import available_cpus, cgroup_cpu_limit, cpu_bf16_native, resolve_speed
from engine.trainer import Trainer
from tests.conftest import TINY

CPU = torch.device("cpu")
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2 | {"avx512f", "avx512bw", "avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16"}


@pytest.mark.parametrize(
    "flags, expected",
    [(AVX2, False), (AVX2 | {"avx512f"}, False), (AVX512_BF16, True), (AMX, True)],
    ids=["avx2", "avx512_without_bf16", "avx512_bf16", "amx"],
)
def test_auto_picks_bf16_only_with_bf16_units_and_channels_last_on_every_cpu(flags, expected):
    choice = resolve_speed("auto", "auto", CPU, flags=flags, environ={})
    assert (choice.amp, choice.channels_last) == (expected, True)
    assert ("bf16 units:" in choice.reason) == expected


def test_a_onednn_isa_cap_below_bf16_means_fp32():
    assert not cpu_bf16_native(AMX, {"ONEDNN_MAX_CPU_ISA": "AVX2"})
    assert not cpu_bf16_native(AMX, {"DNNL_MAX_CPU_ISA": "avx512_core_vnni"})
    assert cpu_bf16_native(AMX, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})
    assert (
        resolve_speed("auto", "auto", CPU, flags=AMX, environ={"ONEDNN_MAX_CPU_ISA": "AVX2"}).amp
        is False
    )


def test_explicit_settings_pass_through_and_float16_is_not_auto_on_a_cpu():
    assert resolve_speed(True, False, CPU, flags=AVX2, environ={}).amp is True
    forced = resolve_speed(False, True, CPU, flags=AMX, environ={})
    assert (forced.amp, forced.channels_last) == (False, True)
    assert (
        resolve_speed("auto", "auto", CPU, amp_dtype="float16", flags=AMX, environ={}).amp is False
    )


@pytest.mark.parametrize("value", ["maybe", 1, "bf16"])
def test_bad_switch_values_are_refused(value):
    with pytest.raises(ConfigError, match="run.amp"):
        load_config(None, [f"run.amp={value}"])
    with pytest.raises(ConfigError, match="run.threads"):
        load_config(None, ["run.threads=-1"])


def test_threads_follow_omp_num_threads_then_affinity_and_cgroup(monkeypatch):
    assert available_cpus({"OMP_NUM_THREADS": "3"}) == 3
    monkeypatch.setattr(
        runtime.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False
    )
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 2)
    assert available_cpus({}) == 2
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert available_cpus({"OMP_NUM_THREADS": ""}) == 6


def test_cgroup_quota_files(tmp_path):
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_limit(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_limit(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_cpu_limit(tmp_path) == 4


@pytest.mark.parametrize(
    "flags, amp", [(AVX2, False), (AVX512_BF16, True)], ids=["avx2", "avx512_bf16"]
)
def test_the_trainer_resolves_auto_and_records_it(tmp_path, monkeypatch, caplog, flags, amp):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: flags)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    overrides = [
        *TINY,
        f"run.out_dir={tmp_path}",
        "run.amp=auto",
        "run.channels_last=auto",
        "run.threads=0",
        "train.stage=cls",
        "train.max_steps_per_epoch=1",
    ]
    with caplog.at_level(logging.INFO):
        trainer = Trainer(load_config(None, overrides))
    assert trainer.amp_enabled is amp and trainer.channels_last is True
    assert trainer.threads == available_cpus() == torch.get_num_threads()
    trainer.fit()
    header = (trainer.run_dir / "config.yaml").read_text().splitlines()[0]
    expected = f"run.amp={'bf16' if amp else 'fp32'}"
    assert (
        header.startswith("# resolved here: ")
        and expected in header
        and runtime.cpu_model() in header
    )
    assert any(expected in record.getMessage() for record in caplog.records)
    assert load_config(trainer.run_dir / "config.yaml").run.amp == "auto"  # the file stays portable
