"""Experiment config loading: files, overrides, round trips.

A config is resolved as defaults <- each YAML file in order <- an override
string, then checked once: unknown keys fail with the valid keys of their
section and a close match, leaves are type-checked by their annotation, and
each section's `__post_init__` (see `schema`) checks its values and their
relations.

Example:
    config = load_config(
        ["configs/nasfpn_r50_640.yaml"], "train.batch_size=8"
    )
    save(config, "runs/r50")  # runs/r50/config.yaml
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from nasfpn_tf.checks import is_int, is_number
from nasfpn_tf.config.schema import ConfigError, ExperimentConfig
from nasfpn_tf.run_files import CONFIG_FILENAME

_FLOAT_LITERAL = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_DOTTED_KEY = re.compile(r"^\s*[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\s*=")


# --------------------------------------------------------------------------
# Building configs from plain data, with schema checks.


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _unknown_key(cls: type, path: str, key: Any) -> ConfigError:
    valid = _field_names(cls)
    where = f"section '{path}'" if path else "the top level"
    message = (
        f"Unknown config key '{_join(path, str(key))}'. Valid keys of "
        f"{where}: {', '.join(valid)}."
    )
    close = difflib.get_close_matches(str(key), valid, n=1)
    if close:
        message += f" Did you mean '{close[0]}'?"
    return ConfigError(message)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _type_error(path: str, tp: Any, value: Any) -> ConfigError:
    return ConfigError(
        f"{path} expects {_type_name(tp)}, got "
        f"{type(value).__name__} {value!r}."
    )


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Checks `value` against the annotation `tp`; returns the typed value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if len(args) != 1:
            raise TypeError(f"Unsupported annotation at {path}: {tp}")
        try:
            return _coerce(value, args[0], path)
        except ConfigError:
            raise _type_error(path, tp, value) from None
    if origin is tuple:
        (item_type, ellipsis) = typing.get_args(tp)
        assert ellipsis is Ellipsis, f"{path}: only tuple[X, ...] is used"
        if not isinstance(value, list | tuple):
            raise _type_error(path, tp, value)
        return tuple(
            _coerce(item, item_type, f"{path}[{i}]")
            for i, item in enumerate(value)
        )
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if is_int(value):
            return value
    elif tp is float:
        if is_number(value):
            return float(value)
        # YAML 1.1 reads "1e-3" (no dot) as a string; accept plain numerals.
        if isinstance(value, str) and _FLOAT_LITERAL.match(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"Unsupported annotation at {path}: {tp}")
    raise _type_error(path, tp, value)


def _build(cls: type, data: Any, path: str = "") -> Any:
    """Builds dataclass `cls` from a (possibly partial) mapping."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        name = f"'{path}'" if path else "The config"
        raise ConfigError(
            f"{name} must be a mapping of keys to values; got "
            f"{type(data).__name__} {data!r}."
        )
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown_key(cls, path, key)
        kwargs[key] = _coerce(value, hints[key], _join(path, key))
    return cls(**kwargs)


def _merge(base: dict, update: Any, cls: type, path: str = "") -> dict:
    """Deep-merges `update` into a copy of `base`, checking keys on the way.

    Keys may be dotted ("train.batch_size") at any depth.
    """
    if not isinstance(update, Mapping):
        name = f"'{path}'" if path else "A config"
        raise ConfigError(
            f"{name} must be a mapping of keys to values; got "
            f"{type(update).__name__} {update!r}."
        )
    merged = dict(base)
    hints = _hints(cls)
    for key, value in update.items():
        if not isinstance(key, str):
            raise _unknown_key(cls, path, key)
        head, _, rest = key.partition(".")
        if head not in hints:
            raise _unknown_key(cls, path, head)
        if rest:
            value = {rest: value}
        field_type = hints[head]
        if dataclasses.is_dataclass(field_type) and isinstance(value, Mapping):
            merged[head] = _merge(
                merged.get(head, {}), value, field_type, _join(path, head)
            )
        elif dataclasses.is_dataclass(field_type):
            raise ConfigError(
                f"'{_join(path, head)}' is a section and takes a mapping; "
                f"got {type(value).__name__} {value!r}."
            )
        else:
            merged[head] = value
    return merged


def to_dict(config: Any) -> dict[str, Any]:
    """Returns a dataclass config as nested dicts of plain YAML values."""

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {
                f.name: plain(getattr(value, f.name))
                for f in dataclasses.fields(value)
            }
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value

    return plain(config)


def from_dict(data: Mapping[str, Any]) -> ExperimentConfig:
    """Builds a config from a (possibly partial) nested mapping.

    Missing keys keep their defaults; unknown keys and wrong types raise
    ConfigError.
    """
    return _resolve([("dict", data)])


def _resolve(layers: Sequence[tuple[str, Any]]) -> ExperimentConfig:
    merged: dict = {}
    for source, layer in layers:
        if layer is None:  # an empty YAML file
            continue
        try:
            merged = _merge(merged, layer, ExperimentConfig)
        except ConfigError as error:
            raise ConfigError(f"{source}: {error}") from None
    return _build(ExperimentConfig, merged)


# --------------------------------------------------------------------------
# YAML text, files and overrides.


def _split_top_level(text: str) -> list[str]:
    """Splits on commas outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def parse_override(text: str) -> dict[str, Any]:
    """Parses `--params_override` into a nested mapping.

    Args:
        text: either `a.b=c,d.e=[1,2]` (values read as YAML scalars or
            lists) or YAML/JSON text such as `{train: {batch_size: 8}}`.

    Returns:
        A mapping whose keys may be dotted paths; {} for blank text.
    """
    if not text.strip():
        return {}
    if _DOTTED_KEY.match(text):
        result: dict[str, Any] = {}
        for part in _split_top_level(text):
            key, sep, raw = part.partition("=")
            key = key.strip()
            if not sep or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
                raise ConfigError(
                    f"Cannot parse override {part.strip()!r}: expected "
                    "key=value with a dotted key such as train.batch_size=8."
                )
            try:
                result[key] = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as error:
                raise ConfigError(
                    f"Cannot parse the value of override {key!r}: {error}"
                ) from None
        return result
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"Cannot parse params_override: {error}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(
            "params_override must be a YAML/JSON mapping or a "
            f"'a.b=c,d.e=f' list; got {text!r}."
        )
    return dict(data)


def _read_text(path: str) -> str:
    import tensorflow as tf  # lazy: keeps `--help` fast

    if not tf.io.gfile.exists(path):
        raise ConfigError(f"Config file not found: {path}")
    with tf.io.gfile.GFile(path, "r") as f:
        return f.read()


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML: {error}") from None


def load_config(
    config_files: Sequence[str] = (),
    params_override: str = "",
    layers: Sequence[tuple[str, Mapping[str, Any]]] = (),
) -> ExperimentConfig:
    """Resolves a config: defaults <- each file in order <- `layers` <- the
    override.

    Args:
        config_files: YAML files (local or gs:// paths); later files win.
        params_override: see `parse_override`; applied last.
        layers: (source name, mapping) pairs applied after the files, such
            as the keys a `--data_dir` sets; keys may be dotted.

    Returns:
        The checked, frozen config.

    Raises:
        ConfigError: a missing file, bad YAML, an unknown key, a wrong type
            or an invalid value; the message names the file and the key.
    """
    if isinstance(config_files, str):
        config_files = [config_files]
    file_layers = [
        (path, _parse_yaml(_read_text(path), path)) for path in config_files
    ]
    layers = [*file_layers, *layers]
    if params_override:
        layers.append(("params_override", parse_override(params_override)))
    return _resolve(layers)


def override(
    config: ExperimentConfig, changes: Mapping[str, Any] | str
) -> ExperimentConfig:
    """Returns `config` with `changes` applied and checked again.

    Args:
        config: the base config.
        changes: a mapping (keys may be dotted: {"train.steps": 5}) or an
            override string as for `--params_override`.
    """
    if isinstance(changes, str):
        changes = parse_override(changes)
    return _resolve([("base", to_dict(config)), ("override", changes)])


def proxy_experiment(config: ExperimentConfig) -> ExperimentConfig:
    """The config a search child trains with: `search.proxy` applied.

    The proxy filters set both neck and head widths and its eval steps
    apply to the held-out reward split; tf.data autotuning is off. Warmup and step boundaries are cut
    to fit the shorter run; a step schedule left without boundaries
    becomes cosine.
    """
    proxy = config.search.proxy
    boundaries = [
        b for b in config.train.step_boundaries if b < proxy.train_steps
    ]
    return override(
        config,
        {
            "model.image_size": proxy.image_size,
            "model.neck.repeats": proxy.repeats,
            "model.neck.filters": proxy.filters,
            "model.head.num_filters": proxy.filters,
            "train.steps": proxy.train_steps,
            "train.warmup_steps": min(
                config.train.warmup_steps, proxy.train_steps - 1
            ),
            "train.step_boundaries": boundaries,
            "train.schedule": config.train.schedule if boundaries else "cosine",
            "eval.steps": proxy.eval_steps,
            # A child's iterators die young; see `data.autotune`.
            "data.autotune": False,
            # Rungs and reruns of a child see the straight run's images.
            "data.deterministic_augmentation": True,
        },
    )


def to_yaml(config: ExperimentConfig) -> str:
    """YAML text of the whole config (every key, in schema order)."""
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_yaml(text: str) -> ExperimentConfig:
    """Inverse of `to_yaml`; a partial text keeps defaults elsewhere."""
    return _resolve([("yaml", _parse_yaml(text, "yaml"))])


def config_path(model_dir: str) -> str:
    """Path of the saved config in `model_dir`."""
    return os.path.join(model_dir, CONFIG_FILENAME)


def save(config: ExperimentConfig, model_dir: str) -> str:
    """Writes `model_dir/config.yaml` atomically; returns its path.

    The text goes to a temporary file first and is renamed over the old
    one, so a reader never sees half a config.
    """
    from nasfpn_tf.files import write_atomic  # lazy: imports TF

    path = config_path(model_dir)
    write_atomic(path, to_yaml(config))
    return path


def load_saved(model_dir: str) -> ExperimentConfig | None:
    """The config saved in `model_dir`, or None when there is none."""
    import tensorflow as tf

    path = config_path(model_dir)
    if not tf.io.gfile.exists(path):
        return None
    return _resolve([(path, _parse_yaml(_read_text(path), path))])


def diff(a: ExperimentConfig, b: ExperimentConfig) -> dict[str, tuple]:
    """Dotted keys whose values differ, mapped to (value in a, value in b)."""

    def flat(data: Mapping, prefix: str = "") -> dict[str, Any]:
        out = {}
        for key, value in data.items():
            if isinstance(value, Mapping):
                out.update(flat(value, _join(prefix, key)))
            else:
                out[_join(prefix, key)] = value
        return out

    fa, fb = flat(to_dict(a)), flat(to_dict(b))
    return {k: (fa[k], fb[k]) for k in fa if fa[k] != fb[k]}


def check_batch(config: ExperimentConfig, num_replicas: int) -> None:
    """Checks that global batch sizes split evenly over the replicas.

    Raises:
        ConfigError: naming the batch size and replica count that clash.
    """
    if num_replicas < 1:
        raise ConfigError(f"num_replicas must be >= 1; got {num_replicas}.")
    for name, size in (
        ("train.batch_size", config.train.batch_size),
        ("eval.batch_size", config.eval.batch_size),
    ):
        if size % num_replicas:
            raise ConfigError(
                f"{name} ({size}) must be divisible by the number of "
                f"replicas ({num_replicas})."
            )
