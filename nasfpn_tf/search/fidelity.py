"""Proxy fidelity: does the search's proxy rank architectures as longer
training does?

A search is only as good as its reward. Before paying for one, train a few
architectures both ways and compare the rankings (Vertex AI NAS asks for
the same check on 10-20 models). `run(config, model_dir)` trains
`fidelity.num_specs` specs (the published NAS-FPN spec of Ghiasi et al.,
CVPR 2019, arXiv:1904.07392, and specs drawn uniformly from the search
space with `fidelity.spec_seed`):

- with the search's proxy settings (`search.proxy`), `fidelity.seeds`
  times each;
- with the reference settings (`fidelity.reference`: a longer schedule
  and/or larger images), `fidelity.reference.seeds` times each.

Every training is a child of the search's own proxy
(`proxy.ProxyTask.train`), from the seeds the search would give it
(`proxy.child_seeds`). Each finished training is appended to
`fidelity.jsonl` before the next starts, so a rerun after a kill (even
SIGKILL) retrains nothing finished. The report (`fidelity.json`, a text
table and `fidelity.png`) gives per spec the proxy AP mean and std and the
reference AP; overall the Spearman and Kendall rank correlations with
bootstrap intervals over specs, the signal-to-noise ratio (std between
specs of the proxy mean over the mean std within a spec), the spread of
proxy means against the within-spec noise, the cost ratio proxy :
reference and a one-line verdict. This module trains;
`nasfpn_tf.search.fidelity_report` computes and writes the report (its
names are re-exported here).
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging

from nasfpn_tf import config as config_lib
from nasfpn_tf import files
from nasfpn_tf.arch import known
from nasfpn_tf.arch.space import SearchSpace
from nasfpn_tf.arch.spec import NeckSpec
from nasfpn_tf.errors import UserError
from nasfpn_tf.run_files import FIDELITY_CHILDREN_DIR as CHILDREN_DIR
from nasfpn_tf.run_files import FIDELITY_LOG_FILE as LOG_FILE
from nasfpn_tf.run_files import FIDELITY_SPECS_FILE as SPECS_FILE
from nasfpn_tf.search.fidelity_report import (  # noqa: F401 (re-exported)
    GOOD_CORRELATION,
    MIN_SNR,
    PLOT_FILE,
    PROXY,
    REFERENCE,
    REPORT_FILE,
    SETTINGS,
    format_table,
    noise_figures,
    plot,
    report,
    verdict,
    write_report,
)


class FidelityError(UserError, ValueError):
    """The fidelity directory holds a run of other specs or settings."""


@dataclasses.dataclass(frozen=True)
class Job:
    """One training: a spec under a setting from one seed."""

    spec_index: int
    setting: str
    seed_index: int

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.spec_index}/{self.seed_index}"

    def work_dir(self, model_dir: str) -> str:
        name = f"{self.setting}-{self.spec_index:02d}-s{self.seed_index}"
        return os.path.join(model_dir, CHILDREN_DIR, name)


def fidelity_specs(
    config: config_lib.ExperimentConfig, space: SearchSpace
) -> list[NeckSpec]:
    """The published spec (if `fidelity.include_published`) and seeded
    random specs from `space`, `fidelity.num_specs` in all, without two
    equivalent specs (same canonical key)."""
    settings = config.fidelity
    specs: list[NeckSpec] = []
    keys: set[str] = set()
    if settings.include_published:
        published = known.NASFPN_SPEC
        specs.append(published)
        keys.add(published.canonical_key())
    rng = random.Random(settings.spec_seed)
    tries = 0
    while len(specs) < settings.num_specs:
        tries += 1
        if tries > 1000 * settings.num_specs:
            raise FidelityError(
                f"the search space holds fewer than {settings.num_specs} "
                "distinct specs; lower fidelity.num_specs."
            )
        spec = space.random_spec(rng)
        if spec.canonical_key() not in keys:
            keys.add(spec.canonical_key())
            specs.append(spec)
    return specs


def jobs(config: config_lib.ExperimentConfig, num_specs: int) -> list[Job]:
    """Every training of the run, in the order they are done: seed by
    seed, so a run stopped early has every spec at some seeds."""
    out = []
    proxy_seeds = config.fidelity.seeds
    reference_seeds = config.fidelity.reference.seeds
    for seed_index in range(max(proxy_seeds, reference_seeds)):
        for setting, count in (
            (PROXY, proxy_seeds),
            (REFERENCE, reference_seeds),
        ):
            if seed_index < count:
                out.extend(
                    Job(k, setting, seed_index) for k in range(num_specs)
                )
    return out


def setting_config(
    config: config_lib.ExperimentConfig, setting: str
) -> config_lib.ExperimentConfig:
    """The experiment whose proxy is `setting`: the search's own, or the
    reference settings put in its place."""
    if setting == PROXY:
        return config
    reference = dataclasses.asdict(config.fidelity.reference)
    return config_lib.override(
        config, {f"search.proxy.{k}": v for k, v in reference.items()}
    )


def run(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    *,
    proxies: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Trains (or resumes) the fidelity run in `model_dir`; returns the
    report (`report`'s dict, with the paths written).

    Args:
        config: the experiment; `search.proxy` is the proxy under test,
            `fidelity` the rest.
        model_dir: the run's directory (local or gs://).
        proxies: setting -> object with `train(spec, work_dir, seed) ->
            ProxyResult` and `release(work_dir)`; None trains with
            `proxy.ProxyTask` (tests pass formulas).

    Raises:
        FidelityError: `model_dir` holds a run with other specs.
    """
    from nasfpn_tf.search import proxy as proxy_lib
    from nasfpn_tf.search import runner

    space = runner.make_space(config)
    specs = fidelity_specs(config, space)
    _check_specs(model_dir, specs)
    if proxies is None:
        from nasfpn_tf.train import strategy as strategy_lib

        runner.check_data(config)
        strategy = strategy_lib.make_strategy(config.runtime)
        proxies = {
            s: proxy_lib.ProxyTask(setting_config(config, s), strategy=strategy)
            for s in SETTINGS
        }
    log = files.JsonlLog.open(os.path.join(model_dir, LOG_FILE))
    done = {row["job"] for row in log.rows}
    todo = [j for j in jobs(config, len(specs)) if j.key not in done]
    logging.info(
        "Fidelity: %d specs, %d trainings done, %d to go.",
        len(specs),
        len(done),
        len(todo),
    )
    for number, job in enumerate(todo, start=1):
        start = time.monotonic()
        result = train_job(
            config, model_dir, log, job, specs, proxies[job.setting]
        )
        print(
            f"fidelity {len(done) + number}/{len(done) + len(todo)}: spec "
            f"{job.spec_index} {job.setting} seed {job.seed_index} -> AP "
            f"{result.reward:.4f} ({result.status}, "
            f"{time.monotonic() - start:.0f} s)",
            flush=True,
        )
    result = report(log.rows, specs, config)
    return write_report(result, model_dir)


def train_job(
    config: config_lib.ExperimentConfig,
    model_dir: str,
    log: files.JsonlLog,
    job: Job,
    specs: Sequence[NeckSpec],
    proxy: Any,
) -> Any:
    """Trains one job with `proxy` (`train(spec, work_dir, seed)`, from
    the seed the search would give it), appends its row to `log`, frees
    its files; returns the result."""
    from nasfpn_tf.search import proxy as proxy_lib

    spec = specs[job.spec_index]
    seed = proxy_lib.child_seeds(
        config.runtime.seed, spec.canonical_key(), job.seed_index + 1
    )[job.seed_index]
    work_dir = job.work_dir(model_dir)
    result = proxy.train(spec, work_dir, seed)
    log.append(
        {
            "job": job.key,
            "setting": job.setting,
            "spec_index": job.spec_index,
            "seed_index": job.seed_index,
            "seed": seed,
            "hash": spec.canonical_key(),
            "reward": result.reward,
            "status": result.status,
            "error": result.error,
            "seconds": round(result.seconds, 3),
            "metrics": dict(result.metrics),
            "time": time.time(),
        }
    )
    proxy.release(work_dir)
    return result


def _check_specs(model_dir: str, specs: Sequence[NeckSpec]) -> None:
    """Saves the run's specs, or checks them against the saved ones."""
    import tensorflow as tf

    path = os.path.join(model_dir, SPECS_FILE)
    keys = [s.canonical_key() for s in specs]
    if tf.io.gfile.exists(path):
        import json

        with tf.io.gfile.GFile(path) as f:
            saved = json.load(f)
        if [s["hash"] for s in saved] != keys:
            raise FidelityError(
                f"{path} lists other specs than fidelity.num_specs, "
                "spec_seed and include_published give now; use a new "
                "--model_dir."
            )
        return
    import json

    files.write_atomic(
        path,
        json.dumps(
            [{"hash": k, "spec": s.to_dict()} for k, s in zip(keys, specs)],
            indent=1,
        ),
    )
