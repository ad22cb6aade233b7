"""`search(config, model_dir)`: the NAS-FPN architecture search.

Ghiasi et al., CVPR 2019 (arXiv:1904.07392), Sec. 3: a controller samples
feature pyramid architectures from the search space, each is trained
briefly on a proxy task and rated by its held-out AP, and the controller
learns from the ratings with PPO. `search.algorithm` picks "ppo",
"reinforce" or "random" (the random-search baseline: the same harness,
space, proxy and budget, sampling uniformly).

One command runs it everywhere. Without KerasTuner's environment variables
one process samples and trains. With them, the process whose
`KERASTUNER_TUNER_ID` contains "chief" serves the oracle (the controller)
and every other one trains children (`launch/tpu_search.sh` starts one per
TPU VM); `search.oracle_host` and `search.oracle_port` fill in
`KERASTUNER_ORACLE_IP`/`_PORT` when they are not set.

The search directory (`search_dir.py` lists it) ends up holding the history,
the controller checkpoints and what `report.py` writes: `best_spec.json`
(train it with `--arch`), `top_specs.json`, the progress figure, the
AP-cost front, a drawing of the best spec and TensorBoard scalars.
Rerunning the same command resumes: no finished child is lost or trained
again, and the controller is the one the uninterrupted search would have.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow as tf
from absl import logging

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.run_files import SUPERNET_BASELINES_FILE
from nasfpn_tf.search import controller as controller_lib
from nasfpn_tf.search import finalists as finalists_lib
from nasfpn_tf.search import oracle as oracle_lib
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.search import report as report_lib
from nasfpn_tf.search import results as results_lib
from nasfpn_tf.search import search_dir as search_dir_lib
from nasfpn_tf.search import warm_start as warm_start_lib
from nasfpn_tf.search.scheduler import DEFAULT_MAX_CONSECUTIVE_FAILURES

TOP_K = report_lib.TOP_K

# How often a worker looks for the chief's finished supernet.
SUPERNET_POLL_SECONDS = 10.0
# Random specs a supernet search's best is compared with at its end.
SUPERNET_BASELINE_SPECS = 20


def make_space(config: config_lib.ExperimentConfig) -> SearchSpace:
    """The search space of `config` (its levels are the model's)."""
    return SearchSpace.from_config(
        config.search.space,
        min_level=config.model.min_level,
        max_level=config.model.max_level,
    )


def make_policy(
    config: config_lib.ExperimentConfig, space: SearchSpace
) -> controller_lib.Policy:
    """The controller of `search.algorithm`, seeded by `runtime.seed`.

    The controller pins its own layers to float32, so the global
    mixed-precision policy (meant for the children) does not reach it.
    """
    return controller_lib.make_policy(
        config.search.algorithm,
        space.num_choices,
        space.mask,
        config.search.controller,
        seed=config.runtime.seed,
    )


def _proxy_factory(
    config: config_lib.ExperimentConfig,
    proxy: proxy_lib.Proxy | None,
    supernet_dir: str | None = None,
) -> oracle_lib.ProxyFactory:
    if proxy is not None:
        return lambda: proxy
    if supernet_dir is not None:
        made: list[proxy_lib.Proxy] = []

        def make_rater() -> proxy_lib.Proxy:
            # One rater a process: its cached inputs and traces are reused.
            if not made:
                from nasfpn_tf.supernet import rater

                made.append(rater.SupernetRater(config, supernet_dir))
            return made[0]

        return make_rater

    def make() -> proxy_lib.Proxy:
        from nasfpn_tf.train import strategy as strategy_lib

        strategy = strategy_lib.make_strategy(config.runtime)
        return proxy_lib.ProxyTask(config, strategy=strategy)

    return make


def check_data(config: config_lib.ExperimentConfig) -> None:
    """Fails at once when a data path the children read matches no file,
    rather than failing every child with it.

    Raises:
        config_lib.ConfigError: naming the key and the path.
    """
    from nasfpn_tf.data import inputs

    for split in ("train", proxy_lib.EVAL_SPLIT):
        if getattr(config.data, f"{split}_path"):
            inputs.check_split(split, inputs.resolve_split(config, split))


def _export_oracle_address(config: config_lib.ExperimentConfig) -> None:
    if os.environ.get(oracle_lib.ENV_TUNER_ID):
        os.environ.setdefault(
            oracle_lib.ENV_ORACLE_IP, config.search.oracle_host
        )
        os.environ.setdefault(
            oracle_lib.ENV_ORACLE_PORT, str(config.search.oracle_port)
        )


def search(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    *,
    proxy: proxy_lib.Proxy | None = None,
    top_k: int = TOP_K,
    max_consecutive_failures: int = DEFAULT_MAX_CONSECUTIVE_FAILURES,
    warm_start: Sequence[str] = (),
) -> dict[str, Any]:
    """Runs (or resumes) the architecture search in `model_dir`.

    Args:
        config: the experiment; `search` configures the search and the
            rest, through `proxy_experiment`, the children.
        model_dir: the search directory (local or gs://).
        proxy: rates specs; None trains them (`proxy.ProxyTask`) under the
            strategy of `runtime`.
        top_k: specs kept in top_specs.json.
        max_consecutive_failures: children failing in a row that stop the
            search (0: never).
        warm_start: earlier searches' history.jsonl files (or directories)
            run with the same proxy settings: their rewards fill the cache
            and teach the controller first (`warm_start.py`). A rerun must
            give the same.

    Returns:
        In a chief or single process: best_reward, best_sample, best_hash,
        best_spec (path), top_specs, history, plot, drawing,
        pareto_specs, pareto_plot (paths; None when not written), samples,
        trained, cached, failed, unique,
        updates, seconds, role. In a worker: role, tuner, trained.

    Raises:
        scheduler.SearchAborted: `max_consecutive_failures` children failed
            in a row (the results so far are written first).
        resume.SearchStateError: the directory holds a search run with
            another batch size, algorithm, seed or space.
        results.SearchStorageError: the directory cannot be written (a
            full disk, no permission); what was recorded stays intact.
        config_lib.ConfigError: a data path the children read matches no
            file.
        warm_start.WarmStartError: a warm-start history run with other
            proxy settings, without its config.yaml, or other histories
            than the search started with.
    """
    start = time.monotonic()
    _export_oracle_address(config)
    space = make_space(config)
    search_dir = search_dir_lib.SearchDir(model_dir)
    if not tf.io.gfile.exists(config_lib.config_path(model_dir)):
        config_lib.save(config, model_dir)
    part = oracle_lib.role()
    if proxy is None and part != "chief":
        check_data(config)
    oracle_kwargs = _oracle_kwargs(config.search, max_consecutive_failures)
    supernet_dir = None
    if proxy is None and config.search.rater == "supernet":
        supernet_dir = _trained_supernet(config, model_dir, part)
    factory = _proxy_factory(config, proxy, supernet_dir)
    if part == "worker":
        return _run_worker(config, space, search_dir, factory, oracle_kwargs)
    _warn_about_parallelism(config.search, part)
    warm = warm_start_lib.load(warm_start, config, model_dir)
    reporter = report_lib.Reporter(config, search_dir, top_k=top_k)
    oracle = oracle_lib.ControllerOracle(
        space,
        make_policy(config, space),
        search_dir,
        on_sample=reporter.on_sample,
        on_update=reporter.on_update,
        warm_start=warm,
        **oracle_kwargs,
    )
    reporter.oracle = oracle
    tuner = oracle_lib.SearchTuner(
        oracle, space, search_dir, factory, config.search.worker_timeout
    )
    with _storage_errors_named(search_dir, oracle):
        oracle.restore()
        tuner.search()
        summary = reporter.finish(role=part, seconds=time.monotonic() - start)
    if oracle.aborted is not None:
        raise oracle.aborted
    if supernet_dir is not None and summary["best_reward"] is not None:
        _add_supernet_results(
            config, space, factory, oracle, summary, model_dir
        )
    return summary


def _add_supernet_results(config, space, factory, oracle, summary, model_dir):
    """A supernet search's extras in `summary`: the baselines rated through
    the same weights and, with `search.supernet.finalists`, the finalists
    trained standalone (printed)."""
    summary["supernet_baselines"] = _supernet_baselines(
        config, space, factory(), summary, model_dir
    )
    if config.search.supernet.finalists:
        summary["finalists"] = finalists_lib.run(
            config, model_dir, oracle.records
        )
        print(finalists_lib.final_text(summary["finalists"], model_dir))


def _supernet_baselines(config, space, rater, summary, model_dir):
    """The best spec's supernet reward beside the published spec's and
    the median of random specs' on the same supernet (written to
    `supernet_baselines.json` and printed)."""
    import random
    import statistics

    from nasfpn_tf import files
    from nasfpn_tf.arch import known

    rng = random.Random(config.runtime.seed)
    randoms = [space.random_spec(rng) for _ in range(SUPERNET_BASELINE_SPECS)]
    rewards = [rater.reward(s, "").reward for s in randoms]
    out = {
        "best": summary["best_reward"],
        "published": rater.reward(known.NASFPN_SPEC, "").reward,
        "random_median": statistics.median(rewards),
        "random_specs": len(rewards),
    }
    path = os.path.join(model_dir, SUPERNET_BASELINES_FILE)
    files.write_atomic(path, json.dumps(out, indent=1) + "\n")
    print(
        f"On the supernet: best found {out['best']:.4f}, published spec "
        f"{out['published']:.4f}, median of {len(rewards)} random specs "
        f"{out['random_median']:.4f} (held-out AP; {path})",
        flush=True,
    )
    return out


def _trained_supernet(
    config: config_lib.ExperimentConfig, model_dir: str, part: str
) -> str:
    """The directory of the search's trained supernet: trained (or
    resumed) here by the chief or a lone process; a worker waits for the
    chief's to finish."""
    from nasfpn_tf.supernet import rater, training

    supernet_dir = rater.default_supernet_dir(config, model_dir)
    rater.check_supernet_matches(config, supernet_dir)
    if part == "worker":
        done = os.path.join(supernet_dir, training.DONE_FILE)
        while not tf.io.gfile.exists(done):
            time.sleep(SUPERNET_POLL_SECONDS)
    else:
        training.train_supernet(config, supernet_dir)
    return supernet_dir


def _oracle_kwargs(
    settings: config_lib.SearchConfig, max_consecutive_failures: int
) -> dict[str, Any]:
    """The scheduling settings the chief's oracle and a worker's stand-in
    share."""
    return {
        "num_samples": settings.num_samples,
        "samples_per_update": settings.samples_per_update,
        "algorithm": settings.algorithm,
        "penalty_reward": settings.penalty_reward,
        "reuse_rewards": settings.reuse_rewards,
        "max_consecutive_failures": max_consecutive_failures,
        "max_retries": settings.max_retries,
    }


def _run_worker(
    config: config_lib.ExperimentConfig,
    space: SearchSpace,
    search_dir: search_dir_lib.SearchDir,
    factory: Any,
    oracle_kwargs: Mapping[str, Any],
) -> dict[str, Any]:
    """A worker trains the children the chief hands out until it stops."""
    stand_in = oracle_lib.ControllerOracle(space, None, None, **oracle_kwargs)
    tuner = oracle_lib.SearchTuner(
        stand_in, space, search_dir, factory, config.search.worker_timeout
    )
    tuner.search()
    return {"role": "worker", "tuner": tuner.tuner_id, "trained": tuner.trained}


def _warn_about_parallelism(
    settings: config_lib.SearchConfig, part: str
) -> None:
    if part == "single" and settings.parallel_trials > 1:
        logging.warning(
            "search.parallel_trials=%d, but this process trains one child at "
            "a time; start a chief and workers (launch/tpu_search.sh) to "
            "train children in parallel.",
            settings.parallel_trials,
        )
    if (
        part == "chief"
        and settings.parallel_trials > settings.samples_per_update
    ):
        logging.warning(
            "search.parallel_trials=%d exceeds search.samples_per_update=%d: "
            "a controller step has fewer children than workers, so some "
            "workers wait at every step.",
            settings.parallel_trials,
            settings.samples_per_update,
        )


@contextlib.contextmanager
def _storage_errors_named(search_dir: search_dir_lib.SearchDir, oracle):
    """Turns a write failure anywhere in the search (a full disk, no
    permission) into a SearchStorageError that names the directory and
    says what is intact."""
    try:
        yield
    except Exception as error:
        cause = proxy_lib.storage_error_of(error)
        if cause is None:
            raise
        raise results_lib.SearchStorageError(
            f"The search stopped: {search_dir.root} cannot be written "
            f"({proxy_lib.describe_error(cause)}). The {len(oracle.records)} "
            f"samples in {search_dir.history_path} are intact; free space "
            "or make the directory writable, then rerun the same command to "
            "resume."
        ) from error
