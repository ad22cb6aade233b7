"""Tests of the proxy task: spec -> reward, failures -> penalty."""

import math
import os

import pytest
import tensorflow as tf

from nasfpn_tf import compat
from nasfpn_tf import config as config_lib
from nasfpn_tf.arch import known
from nasfpn_tf.search import proxy as proxy_lib
from nasfpn_tf.train.trainer import NonFiniteLossError

PENALTY = -0.25


class FakeTrain:
    """Records calls; each call pops its outcome (an exception or metrics)."""

    def __init__(self, *outcomes):
        self.outcomes = list(outcomes)
        self.calls = []

    def __call__(self, config, model_dir, *, strategy, spec, eval_split):
        self.calls.append(
            {
                "config": config,
                "model_dir": model_dir,
                "strategy": strategy,
                "spec": spec,
                "eval_split": eval_split,
            }
        )
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def _config(**changes):
    base = {
        "search.penalty_reward": PENALTY,
        "search.max_retries": 1,
        "search.proxy.train_steps": 7,
        "search.proxy.image_size": 32,
        "search.proxy.filters": 8,
        "search.proxy.repeats": 1,
        "search.proxy.eval_steps": 2,
        "model.neck.type": "fpn",
        "train.warmup_steps": 10,
    }
    base.update(changes)
    return config_lib.override(config_lib.ExperimentConfig(), base)


METRICS = {"AP": 0.125, "AP50": 0.5, "steps": 7, "final_loss": 1.5, "x": "s"}


def test_reward_is_heldout_ap_of_the_proxy_child(tmp_path):
    train = FakeTrain(dict(METRICS))
    task = proxy_lib.ProxyTask(_config(), train_fn=train)
    result = task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert result.status == "ok" and result.error is None
    assert result.reward == 0.125
    assert result.attempts == 1 and result.seconds >= 0
    assert result.metrics == {
        "AP": 0.125,
        "AP50": 0.5,
        "steps": 7.0,
        "final_loss": 1.5,
    }
    (call,) = train.calls
    assert call["spec"] == known.NASFPN_SPEC
    assert call["eval_split"] == "heldout"
    assert call["model_dir"] == str(tmp_path)
    child = call["config"]
    assert child.train.steps == 7
    assert child.train.warmup_steps == 6  # cut to fit the short schedule
    assert child.model.image_size == 32
    assert child.model.neck.filters == child.model.head.num_filters == 8
    assert child.model.neck.repeats == 1
    assert child.eval.steps == 2
    # The sampled spec is the neck, whatever the main config says.
    assert child.model.neck.type == "nasfpn"
    assert child.model.neck.arch is None


@pytest.mark.parametrize(
    "error, name",
    [
        (NonFiniteLossError(3, float("nan")), "NonFiniteLossError"),
        (tf.errors.ResourceExhaustedError(None, None, "OOM"), "ResourceExh"),
        (ValueError("cannot build"), "ValueError"),
    ],
)
def test_failures_earn_the_penalty_without_retry(tmp_path, error, name):
    train = FakeTrain(error, dict(METRICS))
    task = proxy_lib.ProxyTask(_config(), train_fn=train)
    result = task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert result.status == "failed"
    assert result.reward == PENALTY
    assert result.error.startswith(name)
    assert result.attempts == 1 and len(train.calls) == 1


def test_transient_errors_are_retried(tmp_path):
    unavailable = tf.errors.UnavailableError(None, None, "socket closed")
    train = FakeTrain(unavailable, dict(METRICS))
    task = proxy_lib.ProxyTask(_config(), train_fn=train)
    result = task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert result.status == "ok" and result.attempts == 2
    assert len(train.calls) == 2

    train = FakeTrain(unavailable, unavailable, unavailable)
    task = proxy_lib.ProxyTask(
        _config(**{"search.max_retries": 1}), train_fn=train
    )
    result = task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert result.status == "failed" and result.attempts == 2
    assert result.error.startswith("UnavailableError")
    assert len(train.calls) == 2


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"AP": float("nan")}, "nan"),
        ({"AP": -1.0}, "no ground-truth"),
        ({"AP50": 0.5}, "no 'AP'"),
    ],
)
def test_unusable_ap_is_a_failure(tmp_path, metrics, message):
    task = proxy_lib.ProxyTask(_config(), train_fn=FakeTrain(metrics))
    result = task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert result.status == "failed" and result.reward == PENALTY
    assert message in result.error


def test_keyboard_interrupt_is_not_swallowed(tmp_path):
    task = proxy_lib.ProxyTask(
        _config(), train_fn=FakeTrain(KeyboardInterrupt())
    )
    with pytest.raises(KeyboardInterrupt):
        task.reward(known.NASFPN_SPEC, str(tmp_path))


def test_release_drops_checkpoints_unless_kept(tmp_path):
    for keep in (False, True):
        work_dir = tmp_path / str(keep)
        (work_dir / "checkpoints").mkdir(parents=True)
        (work_dir / "checkpoints" / "ckpt-1.index").write_text("x")
        (work_dir / "metrics.jsonl").write_text("{}\n")
        task = proxy_lib.ProxyTask(
            _config(), train_fn=FakeTrain(), keep_checkpoints=keep
        )
        task.release(str(work_dir))
        assert (work_dir / "checkpoints").exists() == keep
        assert (work_dir / "metrics.jsonl").exists()


def test_strategy_reaches_the_trainer_and_batches_are_checked(tmp_path):
    strategy = tf.distribute.get_strategy()
    train = FakeTrain(dict(METRICS))
    task = proxy_lib.ProxyTask(_config(), strategy=strategy, train_fn=train)
    task.reward(known.NASFPN_SPEC, str(tmp_path))
    assert train.calls[0]["strategy"] is strategy

    class EightReplicas:
        num_replicas_in_sync = 8

    with pytest.raises(config_lib.ConfigError, match="train.batch_size"):
        proxy_lib.ProxyTask(
            _config(**{"train.batch_size": 4}), strategy=EightReplicas()
        )


def test_result_round_trips_and_checks_itself():
    result = proxy_lib.ProxyResult(0.5, "ok", {"AP": 0.5}, 3.0)
    assert proxy_lib.ProxyResult.from_dict(result.to_dict()) == result
    with pytest.raises(ValueError, match="status"):
        proxy_lib.ProxyResult(0.5, "great")
    with pytest.raises(ValueError, match="error"):
        proxy_lib.ProxyResult(0.0, "failed")
    with pytest.raises(ValueError, match="finite"):
        proxy_lib.ProxyResult(math.inf, "ok")


@pytest.mark.slow
def test_real_tiny_child_trains_and_earns_heldout_ap(tmp_path):
    """One real child on the generated data: a finite AP in [0, 1]."""
    config = config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "search.proxy.train_steps": 4,
            "train.warmup_steps": 1,
            "train.log_every": 2,
            "data.synthetic.num_train": 8,
            "data.synthetic.num_heldout": 4,
            "data.synthetic.num_val": 4,
        },
    )
    gradients = compat.custom_gradient_names()
    task = proxy_lib.ProxyTask(config)
    work_dir = str(tmp_path / "child")
    result = task.reward(known.NASFPN_SPEC, work_dir)
    assert result.status == "ok", result.error
    assert 0.0 <= result.reward <= 1.0
    assert result.metrics["AP"] == result.reward
    # The child's custom gradients (which hold its graph) are dropped.
    assert compat.custom_gradient_names() == gradients
    assert os.path.isdir(os.path.join(work_dir, "checkpoints"))
    task.release(work_dir)
    assert not os.path.exists(os.path.join(work_dir, "checkpoints"))


# A spec's reward, trained twice from one seed by the real proxy at
# configs/tiny_search.yaml's 500 steps (the proxy that ranks specs), on 2
# busy cores: held-out AP 0.145, 0.220, 0.147 and 0.145 in 4 runs; the
# tolerance is twice their widest gap (0.075), the floor a third of the
# lowest. The runs are not bit-identical: the parser's random flip and
# scale are stateful ops in a parallel map (data/pipeline.py), so which
# image gets which draw varies, and training grows the difference (final
# loss 0.857 against 0.781). Under enable_op_determinism two 20-step runs
# in two processes were bit-identical. Measured before children parsed
# their images in order (`data.deterministic_augmentation`, set by
# proxy_experiment), which made two 30-step children bit-identical.
REPRODUCED_STEPS = 500
REPRODUCED_SEED = 1234
REPRODUCED_FLOOR = 0.05
REPRODUCED_TOLERANCE = 0.15


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two 500-step children: 10 min on busy cores
def test_a_specs_reward_is_reproduced_within_the_measured_tolerance(
    tmp_path,
):
    config = config_lib.override(
        config_lib.ExperimentConfig(),
        {"search.proxy.train_steps": REPRODUCED_STEPS},
    )
    task = proxy_lib.ProxyTask(config)
    rewards = []
    for run in range(2):
        work_dir = str(tmp_path / f"run{run}")
        result = task.train(known.NASFPN_SPEC, work_dir, REPRODUCED_SEED)
        task.release(work_dir)
        assert result.status == "ok", result.error
        assert result.metrics["steps"] == REPRODUCED_STEPS
        rewards.append(result.reward)
    assert min(rewards) > REPRODUCED_FLOOR, rewards
    assert abs(rewards[0] - rewards[1]) <= REPRODUCED_TOLERANCE, rewards


# --------------------------------------------------------------------------
# Child seeds and several trainings per child.


def test_child_seeds_depend_on_search_seed_spec_and_index_only():
    key = known.NASFPN_SPEC.canonical_key()
    seeds = proxy_lib.child_seeds(0, key, 3)
    assert seeds == proxy_lib.child_seeds(0, key, 3)
    assert proxy_lib.child_seeds(0, key, 1) == seeds[:1]
    assert len(set(seeds)) == 3
    assert all(0 <= s < 2**31 for s in seeds)
    assert proxy_lib.child_seeds(1, key, 3) != seeds
    assert proxy_lib.child_seeds(0, "other", 3) != seeds


def test_child_trains_from_its_derived_seed(tmp_path):
    train = FakeTrain(dict(METRICS))
    config = _config(**{"runtime.seed": 4})
    proxy_lib.ProxyTask(config, train_fn=train).reward(
        known.NASFPN_SPEC, str(tmp_path)
    )
    (seed,) = proxy_lib.child_seeds(4, known.NASFPN_SPEC.canonical_key(), 1)
    assert train.calls[0]["config"].runtime.seed == seed
    assert train.calls[0]["model_dir"] == str(tmp_path)


def test_several_seeds_average_and_keep_each_reward(tmp_path):
    train = FakeTrain(
        dict(METRICS, AP=0.1, AP50=0.3), dict(METRICS, AP=0.3, AP50=0.5)
    )
    config = _config(**{"search.proxy.seeds": 2})
    result = proxy_lib.ProxyTask(config, train_fn=train).reward(
        known.NASFPN_SPEC, str(tmp_path)
    )
    seeds = proxy_lib.child_seeds(0, known.NASFPN_SPEC.canonical_key(), 2)
    assert [c["config"].runtime.seed for c in train.calls] == seeds
    assert [c["model_dir"] for c in train.calls] == [
        os.path.join(str(tmp_path), "seed0"),
        os.path.join(str(tmp_path), "seed1"),
    ]
    assert result.status == "ok"
    assert result.reward == pytest.approx(0.2)
    assert result.metrics["AP50"] == pytest.approx(0.4)
    assert result.metrics["reward_seed0"] == pytest.approx(0.1)
    assert result.metrics["reward_seed1"] == pytest.approx(0.3)
    assert result.metrics["seed1"] == seeds[1]


def test_a_failed_seed_fails_the_child(tmp_path):
    train = FakeTrain(dict(METRICS), NonFiniteLossError(3, float("nan")))
    config = _config(**{"search.proxy.seeds": 3})
    result = proxy_lib.ProxyTask(config, train_fn=train).reward(
        known.NASFPN_SPEC, str(tmp_path)
    )
    assert result.status == "failed" and result.reward == PENALTY
    assert result.error.startswith("NonFiniteLossError")
    assert len(train.calls) == 2  # the third seed is not trained


def test_release_drops_every_seeds_checkpoints(tmp_path):
    config = _config(**{"search.proxy.seeds": 2})
    for index in range(2):
        os.makedirs(tmp_path / f"seed{index}" / proxy_lib.CHECKPOINTS_DIR)
    proxy_lib.ProxyTask(config, train_fn=FakeTrain()).release(str(tmp_path))
    assert not any(
        (tmp_path / f"seed{i}" / proxy_lib.CHECKPOINTS_DIR).exists()
        for i in range(2)
    )


# --------------------------------------------------------------------------
# Memory over many children in one process.

MEMORY_CHILDREN = 6
# Resident memory from after the 2nd child (the first ones fill caches) to
# after the 6th, this test on 2 busy cores: -20 MB (1,029 -> 1,009 MB,
# never more than 8 MB above the 2nd); with the custom gradients not
# dropped (`compat.drop_custom_gradients` a no-op) +166 MB (1,042 ->
# 1,208, about 42 MB a child). The bound sits between: 1.5 leaked children.
MEMORY_GROWTH_BOUND_MB = 60


def _resident_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.exists("/proc/self/status"), reason="needs Linux's /proc"
)
def test_memory_stays_flat_over_children(tmp_path, data_dir):
    """Six real children of random specs in one process: the resident
    memory after the last is within the bound of that after the second."""
    import random

    from nasfpn_tf.arch.space import SearchSpace

    config = config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "data.synthetic.num_train": 8,
            "data.synthetic.num_heldout": 4,
            "data.synthetic.num_val": 4,
            "model.image_size": 64,
            "train.batch_size": 2,
            "train.warmup_steps": 1,
            "eval.batch_size": 4,
            "search.proxy.train_steps": 4,
            "search.proxy.image_size": 64,
            "search.proxy.repeats": 1,
            "search.proxy.filters": 8,
        },
    )
    space = SearchSpace.from_config(config)
    rng = random.Random(0)
    task = proxy_lib.ProxyTask(config)
    resident = []
    for child in range(MEMORY_CHILDREN):
        work_dir = str(tmp_path / f"child{child}")
        result = task.train(space.random_spec(rng), work_dir, seed=child)
        task.release(work_dir)
        assert result.status == "ok", result.error
        resident.append(_resident_mb())
    growth = resident[-1] - resident[1]
    assert growth < MEMORY_GROWTH_BOUND_MB, [round(r) for r in resident]
