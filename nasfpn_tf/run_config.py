"""The config a run uses: its flags, a --data_dir's dataset.json and the
config.yaml saved in its model_dir (a rerun resumes with it; flags that
would change it are refused). `nasfpn_tf.main` calls `resolve_config`
before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import logging

from nasfpn_tf import config as config_lib

# Keys that may differ from the saved config on resume: where the run
# executes, not what it computes (a TPU is often renamed between runs).
RESUME_FREE_KEYS = ("runtime.tpu",)
# What a mode keeps in config.yaml of the config it runs.
ConfigForm = Callable[
    [config_lib.ExperimentConfig], config_lib.ExperimentConfig
]
# The splits of a --data_dir each mode reads.
MODE_SPLITS = {
    "search": ("train", "heldout"),
    "fidelity": ("train", "heldout"),
    "supernet": ("train", "heldout"),
    "train": ("train",),
    "eval": ("val",),
    "train_and_eval": ("train", "val"),
    "export": (),
}
SPLIT_HINTS = {
    "train": "--train_sets/--train_images/--train_annotations",
    "val": "--val_sets/--val_images/--val_annotations",
    "heldout": "--heldout_fraction",
}


def resolve_config(
    model_dir: str,
    config_files: Sequence[str] = (),
    params_override: str = "",
    arch: str | None = None,
    tpu: str | None = None,
    overwrite_config: bool = False,
    check_arch: bool = False,
    data: Mapping[str, Any] | None = None,
    saved_form: ConfigForm | None = None,
) -> config_lib.ExperimentConfig:
    """Resolves the run's config and saves it to `model_dir/config.yaml`
    (the chief alone, in a multi-worker run).

    Without config flags (files, override, arch) a saved config is reused
    (resume); `tpu` only names where it runs and may change. With config
    flags, the result must equal the saved config (up to RESUME_FREE_KEYS)
    unless `overwrite_config`.

    Args:
        model_dir: the run directory.
        config_files: YAML files, later wins.
        params_override: override text, applied after the files.
        arch: spec JSON path for model.neck.arch.
        tpu: TPU name; also selects the "tpu" strategy.
        overwrite_config: let the flags replace a differing saved config.
        check_arch: read and check the spec of `model.neck.arch` before
            saving anything (the modes that build it).
        data: config keys of a `--data_dir` (`data_overrides`), applied
            after the files and before the override.
        saved_form: what the mode keeps of the flags' config in
            `config.yaml`, where that is not the config itself
            (--mode=supernet keeps the experiment it trains, the
            proxy's sizes): the saved config is checked against it and
            it is what is saved.

    Returns:
        The config the run uses.

    Raises:
        config_lib.ConfigError: an invalid config, or flags that conflict
            with the saved config.
    """
    saved = config_lib.load_saved(model_dir)
    tpu_changes: dict[str, Any] = {}
    if tpu is not None:
        tpu_changes = {"runtime.tpu": tpu, "runtime.strategy": "tpu"}
    flags_given = bool(
        config_files or params_override or arch is not None or data
    )
    if saved is not None and not flags_given:
        logging.info("Resuming with %s", config_lib.config_path(model_dir))
        if check_arch:
            check_spec(saved)
        if not tpu_changes:
            return saved
        config = config_lib.override(saved, tpu_changes)
        _save(config, model_dir)
        return config
    layers = [("--data_dir", dict(data))] if data else []
    config = config_lib.load_config(config_files, params_override, layers)
    extra: dict[str, Any] = dict(tpu_changes)
    if arch is not None:
        extra["model.neck.arch"] = arch
    if extra:
        config = config_lib.override(config, extra)
    if check_arch:
        check_spec(config)
    kept = saved_form(config) if saved_form else config
    if saved is not None and not overwrite_config:
        _check_unchanged(saved, kept, model_dir)
    _save(kept, model_dir)
    return config


def _check_unchanged(
    saved: config_lib.ExperimentConfig,
    config: config_lib.ExperimentConfig,
    model_dir: str,
) -> None:
    """Raises config_lib.ConfigError listing the keys (but
    RESUME_FREE_KEYS) where `config` differs from the saved config."""
    conflicts = {
        key: values
        for key, values in config_lib.diff(saved, config).items()
        if key not in RESUME_FREE_KEYS
    }
    if conflicts:
        lines = "\n".join(
            f"  {key}: saved {old!r}, flags give {new!r}"
            for key, (old, new) in sorted(conflicts.items())
        )
        raise config_lib.ConfigError(
            f"{config_lib.config_path(model_dir)} differs from the "
            f"config the flags give:\n{lines}\nUse a new --model_dir, "
            "drop the config flags to resume with the saved config, or "
            "pass --overwrite_config."
        )


def _save(config: config_lib.ExperimentConfig, model_dir: str) -> None:
    # The workers of a multi-worker run other than the chief read the
    # saved config but write nothing to model_dir.
    from nasfpn_tf.train import strategy as strategy_lib

    if strategy_lib.owns_model_dir(config.runtime):
        config_lib.save(config, model_dir)


def data_overrides(data_dir: str, mode: str) -> dict[str, Any]:
    """The config keys a converted data folder sets (see
    `nasfpn_tf.data.dataset`).

    Raises:
        config_lib.ConfigError: no readable dataset.json in `data_dir`, or
            it lacks a split `mode` reads.
    """
    from nasfpn_tf.data import dataset

    try:
        info = dataset.load(data_dir)
    except dataset.DatasetError as error:
        raise config_lib.ConfigError(str(error)) from None
    for split in MODE_SPLITS.get(mode, ()):
        if info.split(split) is None:
            raise config_lib.ConfigError(
                f"--data_dir={data_dir} has no {split!r} split, which "
                f"--mode={mode} reads; convert again with "
                f"{SPLIT_HINTS[split]}."
            )
    return info.config_overrides()


def check_spec(config: config_lib.ExperimentConfig) -> None:
    """Reads and checks the neck spec `model.neck.arch` names, if any.

    Raises:
        config_lib.ConfigError: a missing or invalid spec file (the
            message names the field at fault), or a spec whose levels
            differ from model.min_level..max_level.
    """
    path = config.model.neck.arch
    if not path:
        return
    from nasfpn_tf.arch.spec import NeckSpec, SpecError

    try:
        spec = NeckSpec.load(path)
    except SpecError as error:
        raise config_lib.ConfigError(f"model.neck.arch: {error}") from None
    try:
        spec.check_levels(config.model.min_level, config.model.max_level)
    except SpecError as error:
        raise config_lib.ConfigError(
            f"model.neck.arch: {path} {error}."
        ) from None
