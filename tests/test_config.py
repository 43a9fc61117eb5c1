"""Config: defaults are the paper's, YAML and overrides merge, bad keys and values are named."""

import functools
import re

import pytest
import torch
import yaml

import test as test_cli
import train as train_cli
from engine.checkpoint import save_checkpoint
from engine.cli import run_cli
from engine.config import (
    CONFIG_DIR,
    DEFAULT_PRESET,
    Config,
    ConfigError,
    config_from_dict,
    default_preset,
    load_config,
    parse_override,
    validate,
)
from engine.config_checks import (
    SECTION_CHECKS,
    check_data,
    check_data_loading,
    check_loss,
    check_method,
    check_model,
    check_run,
    check_stage,
    check_test,
    check_train,
)


def test_defaults_are_the_papers():
    config = load_config()
    assert (config.data.hr_size, config.data.scale, config.model.seg_width) == (1024, 4, 4.0)
    assert config.train.isr.lr_isr == 5e-5 and config.train.isr.lr_seg == 2e-5
    assert config.train.joint.lr_isr == 1e-5 and config.train.joint.batch_size == 1
    assert config.loss.task_aware_weight == 10.0 and config.loss.tv_weight == 1e-6


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  hr_size: 128\ntrain:\n  cls:\n    epochs: 3\n")
    config = load_config(
        path,
        ["train.cls.epochs=5", "loss.class_weights=[1, 2, 3, 4, 5]", "model.imagenet_weights=null"],
    )
    assert config.data.hr_size == 128 and config.train.cls.epochs == 5
    assert config.loss.class_weights == [1, 2, 3, 4, 5]
    assert config_from_dict(config.to_dict()) == config


def test_int_accepted_for_float_field():
    assert load_config(None, ["model.seg_width=1"]).model.seg_width == 1.0


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.hr_sz=128", "unknown config key 'data.hr_sz'"),
        ("data.scale=3", "data.scale must be one of"),
        ("data.hr_size=0", "data.hr_size must be positive"),
        ("data.hr_size=-64", "data.hr_size must be positive"),
        ("data.hr_size=100", "divisible"),
        ("data.n_train=0", "data.n_train must be positive"),
        ("train.cls.batch_size=0", "train.cls.batch_size must be positive"),
        ("train.stage=warmup", "train.stage must be one of"),
        ("model.cam_target=any", "model.cam_target"),
        ("data.hr_size=abc", "data.hr_size' expects"),
        ("loss.class_weights=[1,2]", "loss.class_weights"),
        ("nonsense", "key=value"),
    ],
)
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_parse_override_nests():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}


def test_float_keys_accept_yaml_exponents_without_a_dot(tmp_path):
    """YAML 1.1 reads ``1e-3`` as a string; a float key must still take it, and reject junk."""
    config = load_config(None, ["train.cls.lr_cls=1e-3"])
    assert config.train.cls.lr_cls == pytest.approx(1e-3)
    preset = tmp_path / "p.yaml"
    preset.write_text("train:\n  isr:\n    lr_isr: 2E-4\n")
    assert load_config(preset).train.isr.lr_isr == pytest.approx(2e-4)
    with pytest.raises(ConfigError, match="lr_cls' expects"):
        load_config(None, ["train.cls.lr_cls=1e-3x"])


def test_presets_are_found_from_any_directory(tmp_path, monkeypatch):
    """A preset named relative to the repository (or by its name alone) loads from another cwd."""
    demo = load_config(CONFIG_DIR / "demo.yaml")
    monkeypatch.chdir(tmp_path)
    for name in ("configs/demo.yaml", "demo.yaml", "demo", DEFAULT_PRESET, default_preset()):
        assert load_config(name) == demo, name
    idrid = load_config(default_preset("idrid"), ["data.root=IDRiD"])
    assert idrid == load_config(CONFIG_DIR / "idrid.yaml", ["data.root=IDRiD"])
    # A file of that name in the current directory comes first.
    (tmp_path / "demo.yaml").write_text("data:\n  hr_size: 32\n  crop_size: 32\n")
    assert load_config("demo.yaml").data.hr_size == 32
    with pytest.raises(ConfigError, match="config file not found: no_such_preset"):
        load_config("no_such_preset")


def test_unknown_preset_key_names_the_file_and_the_closest_key(tmp_path):
    preset = tmp_path / "typo.yaml"
    preset.write_text("model:\n  seg_widht: 2\n")
    message = "unknown config key 'model.seg_widht' in preset .*typo.yaml; did you mean 'model.seg_width'?"
    with pytest.raises(ConfigError, match=message):
        load_config(preset)


@pytest.mark.parametrize(
    "override, key, suggestion",
    [
        ("train.isr.lr_isrr=1", "train.isr.lr_isrr", "'train.isr.lr_isr'"),
        ("mdoel.seg_width=1", "mdoel", "'model'"),
        ("data.seg_width=1", "data.seg_width", "'model.seg_width'"),  # right key, wrong section
    ],
)
def test_unknown_override_key_names_the_override_and_the_closest_key(override, key, suggestion):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert str(error.value) == (
        f"unknown config key '{key}' in override '{override}'; did you mean {suggestion}?"
    )


def test_train_print_config_prints_the_resolved_config(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the default preset is found from anywhere
    overrides = ["data.hr_size=64", "train.cls.epochs=7", f"run.out_dir={tmp_path / 'runs'}"]
    argv = ["--print-config", "--method", "lr_cls", "--name", "printed", *overrides]
    assert run_cli(train_cli.main, argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = load_config(DEFAULT_PRESET, [*overrides, "run.name=printed"], method="lr_cls")
    assert config_from_dict(printed) == expected and printed["method"] == "lr_cls"
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder


def test_test_print_config_prints_the_checkpoints_config(tmp_path, capsys):
    config = load_config(None, ["data.hr_size=64", "run.name=saved", "test.tta=true"])
    checkpoint = save_checkpoint(
        {"config": config.to_dict(), "model": {}}, tmp_path / "saved" / "checkpoints" / "best.pt"
    )
    assert run_cli(test_cli.main, ["--checkpoint", str(checkpoint), "--print-config"]) == 0
    assert config_from_dict(yaml.safe_load(capsys.readouterr().out)) == config
    assert not list((tmp_path / "saved").glob("metrics*.json"))  # nothing evaluated


@pytest.mark.parametrize(
    "check, key, bad",
    [
        (check_data, "data.val_fraction", 1.0),
        (check_data_loading, "data.prefetch_factor", 0),
        (check_model, "model.seg_prior", 1.5),
        (check_method, "method", "nope"),
        (check_loss, "loss.label_smoothing", 1.0),
        (check_loss, "loss.seg_loss", "bce"),
        (check_loss, "loss.seg_pos_weight", 0.0),
        (lambda config: check_stage("seg", config.train.seg), "train.seg.eval_every", -1),
        (check_train, "train.ema_decay", 1.0),
        (check_train, "train.seg.lr_cls", -1.0),
        (lambda config: check_stage("joint", config.train.joint), "train.joint.schedule", "x"),
        (check_test, "test.input", "sr"),
        (check_run, "run.optimizer_impl", "fast"),
    ],
)
def test_each_section_check_rejects_a_bad_value_naming_the_key(check, key, bad):
    config = Config()
    for section_check in SECTION_CHECKS:
        section_check(config)  # the defaults pass every check
    *path, name = key.split(".")
    setattr(functools.reduce(getattr, path, config), name, bad)
    shown = repr(bad) if isinstance(bad, str) else str(bad)  # the message names key and value
    for checker in (check, validate):
        with pytest.raises(ConfigError, match=rf"^{re.escape(key)}\b.*{re.escape(shown)}"):
            checker(config)


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_preset_loads_and_builds_its_model(preset):
    """Each preset of configs/ passes validation (a dataset preset with a data root) and its
    networks build: a preset that a schema change broke fails here, not in a user's first run."""
    from engine.builders import build_model

    config = load_config(
        CONFIG_DIR / preset, ["data.root=somewhere", "model.imagenet_weights=null"]
    )
    assert config.data.hr_size % config.data.scale == 0
    model = build_model(config)
    assert sum(p.numel() for p in model.parameters()) > 0


INIT_FROM_RELEASE_PRESETS = sorted(
    p.name
    for p in CONFIG_DIR.glob("*.yaml")
    if (yaml.safe_load(p.read_text()).get("train") or {}).get("init_from")
    not in (None, "synthetic")
)


@pytest.mark.parametrize("preset", INIT_FROM_RELEASE_PRESETS)
def test_a_preset_that_starts_from_a_release_fits_its_weights(preset):
    """A preset whose train.init_from names a committed release (idrid_1024 starts from the 512
    one) gets weights that load strictly into its networks: a release or preset change that breaks
    the match fails here, not an hour into a run."""
    from engine.builders import build_model
    from engine.checkpoint import load_checkpoint, load_model_state
    from engine.release import resolve_checkpoint

    config = load_config(
        CONFIG_DIR / preset, ["data.root=somewhere", "model.imagenet_weights=null"]
    )
    source = resolve_checkpoint(config.train.init_from)
    model = build_model(config)
    loaded = load_checkpoint(source)["model"]
    load_model_state(model, loaded, source)
    name = next(key for key in loaded if key.endswith("weight") and loaded[key].ndim == 4)
    torch.testing.assert_close(model.state_dict()[name], loaded[name].float())
