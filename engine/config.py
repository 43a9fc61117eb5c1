"""Load a run's configuration: dataclass defaults <- YAML preset <- method recipe <- overrides.

A run's config = dataclass defaults (``engine/config_schema.py``, the paper's hyperparameters)
<- YAML preset (``configs/*.yaml``; a relative name not found from the current directory is
looked up in the repository's ``configs/`` folder) <- method recipe (``--method NAME``,
``engine/methods.py``) <- ``key=value`` command-line overrides with dotted keys
(``data.hr_size=128``, ``train.cls.epochs=3``). Unknown keys (with the closest known ones),
wrong types and impossible values (``engine/config_checks.py``) raise :class:`ConfigError`
naming the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import yaml

from engine.config_checks import AUGMENT_RANGES, OPTIMIZER_IMPLS, validate
from engine.config_schema import (
    INPUTS,
    SEG_DIVISOR,
    STAGES,
    Config,
    ConfigError,
    DataConfig,
    EvaluationConfig,
    LossConfig,
    ModelConfig,
    RunConfig,
    StageConfig,
    TrainConfig,
    parse_stages,
)
from engine.methods import METHODS, Method

__all__ = [
    "AUGMENT_RANGES",
    "CONFIG_DIR",
    "DEFAULT_PRESET",
    "INPUTS",
    "OPTIMIZER_IMPLS",
    "SEG_DIVISOR",
    "STAGES",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "LossConfig",
    "ModelConfig",
    "RunConfig",
    "StageConfig",
    "TrainConfig",
    "apply_method",
    "config_differences",
    "config_from_dict",
    "config_yaml",
    "default_preset",
    "flat_keys",
    "get_method",
    "load_config",
    "parse_override",
    "parse_stages",
    "resolve_preset",
    "save_config",
    "validate",
]

# The presets ship with the code: found from the repository, whatever the current directory.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_PRESET = str(CONFIG_DIR / "demo.yaml")

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


def _merge(target: Any, updates: dict, prefix: str = "", source: str = "") -> None:
    """Apply a nested dict of updates onto a dataclass instance, in place; ``source`` (``override
    'a.b=1'``, ``preset configs/x.yaml``) is named in the errors."""
    where = f" in {source}" if source else ""
    if not isinstance(updates, dict):
        raise ConfigError(
            f"config section '{prefix.rstrip('.') or '<root>'}'{where} must be a mapping, got {updates!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(target)}
    hints = typing.get_type_hints(type(target))
    for name, value in updates.items():
        key = f"{prefix}{name}"
        if name not in fields:
            raise ConfigError(f"unknown config key '{key}'{where}{_did_you_mean(key, fields)}")
        current = getattr(target, name)
        if dataclasses.is_dataclass(current):
            _merge(current, value, key + ".", source)
            continue
        try:
            setattr(target, name, _coerce(value, hints[name], key))
        except ConfigError as error:
            raise ConfigError(f"{error}{where}") from None


def _did_you_mean(key: str, fields: Iterable[str]) -> str:
    """``"; did you mean 'train.isr.lr_isr'?"``: a very close key of the same section, else the
    same key name in another section (``data.seg_width`` -> ``model.seg_width``), else the closest
    keys of the section or, failing those, anywhere; none close: the section's known keys."""
    prefix, _, name = key.rpartition(".")
    prefix = f"{prefix}." if prefix else ""
    fields = list(fields)
    everywhere = known_keys()
    close = (
        [prefix + match for match in difflib.get_close_matches(name, fields, n=3, cutoff=0.8)]
        or [other for other in everywhere if other.rpartition(".")[2] == name and other != key]
        or [prefix + match for match in difflib.get_close_matches(name, fields, n=3)]
        or difflib.get_close_matches(key, everywhere, n=3, cutoff=0.75)
    )
    if close:
        return f"; did you mean {' or '.join(repr(other) for other in close)}?"
    return f" (known: {', '.join(sorted(fields))})"


def known_keys() -> list[str]:
    """Every dotted key of the config, sections included (``data``, ``data.hr_size``, ...)."""
    flat = flat_keys(Config().to_dict())
    sections = {key.rsplit(".", 1)[0] for key in flat if "." in key}
    return sorted({*flat, *sections})


def flat_keys(values: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: a saved config's dotted keys, for comparing two."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flat_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


ABSENT = "<absent>"  # config_differences: the value of a key one of the two configs lacks


def config_differences(
    saved: dict, wanted: dict, ignore: Collection[str] = ()
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, saved value, wanted value)``, sorted by key, for every setting in which two
    configs (nested dicts: ``Config.to_dict()``, a saved config.yaml) differ, less ``ignore``.

    The one config diff: a resume (``RESUME_MAY_CHANGE``, engine/checkpoint.py) and the table
    runner (``NOT_COMPARED``, engine/table_reuse.py) each pass their own ``ignore``. A key one side
    lacks compares as None and is reported as ``ABSENT``.
    """
    old, new = flat_keys(saved), flat_keys(wanted)
    return [
        (key, old.get(key, ABSENT), new.get(key, ABSENT))
        for key in sorted(old.keys() | new.keys())
        if key not in ignore and old.get(key) != new.get(key)
    ]


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


def resolve_preset(path: str | Path) -> Path:
    """``path`` when it is a file; else a relative name looked up in the repository's presets:
    ``configs/demo.yaml``, ``demo.yaml`` and ``demo`` all find ``<repo>/configs/demo.yaml`` from any
    current directory. Nothing found: ``path`` itself (:func:`load_config` says it is missing)."""
    given = Path(path).expanduser()
    if given.is_file() or given.is_absolute():
        return given
    named = given if given.suffix in (".yaml", ".yml") else given.with_name(given.name + ".yaml")
    for candidate in (CONFIG_DIR.parent / given, CONFIG_DIR / given, CONFIG_DIR / named):
        if candidate.is_file():
            return candidate
    return given


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
        _merge(config, _nested(key, value), source=f"method {name}")
    config.method = name


def _read_preset(path: str | Path) -> dict:
    """A YAML preset's contents (a missing file or bad YAML is a :class:`ConfigError`)."""
    found = resolve_preset(path)
    if not found.is_file():
        raise ConfigError(f"config file not found: {path} (nor under {CONFIG_DIR})")
    try:
        return yaml.safe_load(found.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {found} is not valid YAML: {error}") from error


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    method: str | None = None,
) -> Config:
    """Defaults <- YAML file <- method recipe <- overrides, then :func:`validate`.

    The method is ``method``, else a ``method=NAME`` override, else the YAML's ``method`` key;
    none of them: the defaults (DeepMT-DR) as they are. ``path`` may name a preset of the
    repository's ``configs/`` folder from any current directory (:func:`resolve_preset`).
    """
    config = Config()
    loaded = _read_preset(path) if path is not None else {}
    if path is not None:
        _merge(config, loaded, source=f"preset {path}")
    parsed = [(text, parse_override(text)) for text in overrides]
    named = [update["method"] for _, update in parsed if "method" in update]
    name = (
        method
        or (named[-1] if named else None)
        or (loaded.get("method") if isinstance(loaded, dict) else None)
    )
    if name:
        apply_method(config, name)
    for text, update in parsed:
        _merge(config, update, source=f"override '{text}'")
    validate(config)
    return config


def config_from_dict(values: dict) -> Config:
    """Rebuild a config saved in a checkpoint or ``config.yaml``."""
    config = Config()
    _merge(config, values, source="the saved config")
    validate(config)
    return config


def config_yaml(config: Config, note: str = "") -> str:
    """The resolved config as YAML (what a run's ``config.yaml`` holds, and ``--print-config``
    prints); ``note`` (e.g. what ``auto`` became here) goes first as comments."""
    header = "".join(f"# {line}\n" for line in note.splitlines())
    return header + yaml.safe_dump(config.to_dict(), sort_keys=False)


def save_config(config: Config, path: str | Path, note: str = "") -> None:
    """Write the resolved config as YAML (:func:`config_yaml`) to ``path``."""
    Path(path).write_text(config_yaml(config, note))
