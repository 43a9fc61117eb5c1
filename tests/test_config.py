"""Config: defaults are the paper's, YAML and overrides merge, bad keys and values are named."""

import pytest

from engine.config import ConfigError, config_from_dict, load_config, parse_override


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
