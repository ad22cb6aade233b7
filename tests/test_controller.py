"""Tests for nasfpn_tf.search.controller and nasfpn_tf.search.policy:
the LSTM controller and the random policy on the same toy spaces and
rewards."""

import math

import numpy as np
import pytest

from nasfpn_tf.config import ControllerConfig
from nasfpn_tf.search.controller import Controller, make_policy
from nasfpn_tf.search.policy import RandomPolicy, Samples

CHOICES = (3, 3, 4)


def tiny(**changes):
    """A small controller's hyperparameters."""
    return ControllerConfig(lstm_size=16, embedding_size=8, **changes)


def distinct_and_bounded(step, prefix):
    """Step 1 may not repeat step 0; step 2 may not exceed step 0."""
    if step == 1:
        return tuple(i != prefix[0] for i in range(3))
    if step == 2:
        return tuple(i <= prefix[0] for i in range(4))
    return (True,) * CHOICES[step]


def valid_counts(actions):
    """[n, steps] hand-counted valid choices under distinct_and_bounded."""
    actions = np.asarray(actions)
    ones = np.ones(len(actions))
    return np.stack([3 * ones, 2 * ones, actions[:, 0] + 1], axis=1)


def toy_reward(actions, target):
    """Share of decisions equal to the hidden target's."""
    return (np.asarray(actions) == np.asarray(target)).mean(axis=1)


def test_init_unmasked_entropy_and_log_prob_are_uniform():
    controller = Controller(CHOICES, config=tiny())
    samples = controller.sample(16)
    expected = sum(math.log(c) for c in CHOICES)
    np.testing.assert_allclose(samples.entropies, expected, rtol=1e-6)
    np.testing.assert_allclose(samples.log_probs, -expected, rtol=1e-6)
    assert samples.actions.shape == (16, 3)
    assert samples.masks.shape == (16, 3, 4)
    # Step 0 and 1 have 3 choices: the padded 4th is never valid there.
    assert not samples.masks[:, :2, 3].any()


def test_init_masked_entropy_and_log_prob_use_valid_counts():
    controller = Controller(CHOICES, distinct_and_bounded, tiny())
    samples = controller.sample(32)
    expected = np.log(valid_counts(samples.actions)).sum(axis=1)
    np.testing.assert_allclose(samples.entropies, expected, rtol=1e-6)
    np.testing.assert_allclose(samples.log_probs, -expected, rtol=1e-6)
    np.testing.assert_allclose(controller.entropy(samples), expected, rtol=1e-6)
    np.testing.assert_array_equal(
        samples.masks, controller.masks_for(samples.actions)
    )


def test_masked_choices_are_never_sampled_even_when_favoured():
    controller = Controller(CHOICES, distinct_and_bounded, tiny())
    # Huge logits on choices that are often invalid.
    controller._bias[1, :3].assign([50.0, 0.0, 0.0])
    controller._bias[2].assign([0.0, 0.0, 0.0, 50.0])
    samples = controller.sample(2000)
    actions = samples.actions
    assert (actions[:, 1] != actions[:, 0]).all()
    assert (actions[:, 2] <= actions[:, 0]).all()
    # Where choice 0 is valid at step 1 its huge logit wins; every valid
    # first choice still shows up.
    assert (actions[actions[:, 0] != 0, 1] == 0).all()
    assert set(actions[:, 0]) == {0, 1, 2}
    assert np.isfinite(samples.log_probs).all()


def test_recomputed_log_prob_and_entropy_match_sampling():
    controller = Controller(CHOICES, distinct_and_bounded, tiny(), seed=3)
    first = controller.sample(8)
    controller.update(first, toy_reward(first.actions, (2, 0, 1)))
    samples = controller.sample(8)
    assert np.ptp(samples.log_probs) > 0  # no longer uniform
    # Padding past the 3 choices of steps 0 and 1 never learns.
    assert not controller._kernel[:2, :, 3].numpy().any()
    assert not controller._bias[:2, 3].numpy().any()
    np.testing.assert_allclose(
        controller.log_prob(samples), samples.log_probs, rtol=1e-5
    )
    np.testing.assert_allclose(
        controller.entropy(samples.actions), samples.entropies, rtol=1e-5
    )


def test_temperature_and_tanh_constant_shape_the_logits():
    controller = Controller(
        (3,), config=tiny(temperature=2.0, tanh_constant=1.5), seed=1
    )
    bias = np.array([2.0, 0.0, -1.0], dtype=np.float32)
    controller._bias[0].assign(bias)
    logits = 1.5 * np.tanh(bias / 2.0)
    expected = logits - np.log(np.exp(logits).sum())
    got = controller.log_prob(np.arange(3)[:, None])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_weights_and_sampling_are_deterministic_given_seed():
    def make(seed):
        return Controller(CHOICES, config=tiny(), seed=seed)

    first, again, other = make(5), make(5), make(6)
    for a, b in zip(first.trainable_variables, again.trainable_variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    lstm_kernel = first.trainable_variables[1].numpy()
    assert not np.array_equal(lstm_kernel, other.trainable_variables[1])
    assert np.abs(lstm_kernel).max() <= 0.1  # INIT_SCALE
    np.testing.assert_array_equal(
        first.sample(20).actions, again.sample(20).actions
    )
    assert not np.array_equal(
        first.sample(20).actions, other.sample(20).actions
    )


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_update_raises_probability_of_best_sample(algorithm):
    controller = Controller(
        CHOICES,
        distinct_and_bounded,
        tiny(learning_rate=0.01),
        algorithm=algorithm,
    )
    samples = controller.sample(8)
    rewards = toy_reward(samples.actions, samples.actions[3])
    best = int(np.argmax(rewards))
    before = controller.log_prob(samples)
    stats = controller.update(samples, rewards)
    after = controller.log_prob(samples)
    assert after[best] > before[best] + 1e-3
    assert stats["update"] == 1.0
    assert stats["mean_reward"] == pytest.approx(rewards.mean())
    assert stats["mean_advantage"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_settles_on_hidden_target(algorithm):
    target = np.array([3, 0, 2])
    controller = Controller(
        (4, 4, 4), config=tiny(learning_rate=0.05), algorithm=algorithm
    )
    max_updates, batch = 25, 8  # at most 200 samples of 64 sequences
    for _ in range(max_updates):
        samples = controller.sample(batch)
        controller.update(samples, toy_reward(samples.actions, target))
        if np.exp(controller.log_prob(target[None])[0]) > 0.9:
            break
    assert np.exp(controller.log_prob(target[None])[0]) > 0.9
    assert (controller.sample(32).actions == target).all(axis=1).mean() > 0.7


def test_baseline_is_moving_average_of_rewards():
    controller = Controller(CHOICES, config=tiny(baseline_decay=0.5))
    samples = controller.sample(2)
    controller.update(samples, [1.0, 3.0])
    # Starts at the first batch's mean 2, absorbs 1 (-> 1.5), 3 (-> 2.25).
    assert controller.baseline == pytest.approx(2.25)
    stats = controller.update(samples, [0.0, 0.0])
    assert stats["mean_advantage"] == pytest.approx(-2.25)
    assert controller.baseline == pytest.approx(2.25 / 4)
    assert controller.num_updates == 2


def test_update_from_bare_actions_recomputes_masks():
    controller = Controller(CHOICES, distinct_and_bounded, tiny())
    stats = controller.update([[2, 0, 1], [1, 2, 0]], [1.0, 0.0])
    # Old log-probs are the current policy's: the first ratio is exactly 1.
    assert stats["update"] == 1.0
    assert controller.log_prob([[2, 0, 1]])[0] > -np.log([3, 2, 3]).sum()


def test_checkpoint_resume_is_bit_identical(tmp_path):
    def make():
        return Controller(
            CHOICES, distinct_and_bounded, tiny(learning_rate=0.02), seed=7
        )

    def step(controller):
        samples = controller.sample(6)
        rewards = toy_reward(samples.actions, (2, 1, 1))
        return samples, controller.update(samples, rewards)

    uninterrupted = make()
    for _ in range(3):
        step(uninterrupted)
    path = uninterrupted.save(str(tmp_path / "controller"))
    resumed = make()
    resumed.restore(path)

    samples_a, stats_a = step(uninterrupted)
    samples_b, stats_b = step(resumed)
    for field in ("actions", "log_probs", "entropies", "masks"):
        np.testing.assert_array_equal(
            getattr(samples_a, field), getattr(samples_b, field)
        )
    assert stats_a == stats_b
    assert resumed.num_updates == 4
    np.testing.assert_array_equal(
        uninterrupted.sample(4).actions, resumed.sample(4).actions
    )
    for a, b in zip(
        uninterrupted.trainable_variables, resumed.trainable_variables
    ):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_restore_into_a_different_space_fails(tmp_path):
    path = Controller(CHOICES, config=tiny()).save(str(tmp_path / "c"))
    with pytest.raises(ValueError):
        Controller((3, 3, 5), config=tiny()).restore(path)


def test_config_sets_the_hyperparameters():
    config = ControllerConfig(
        lstm_size=12,
        embedding_size=6,
        temperature=2.0,
        tanh_constant=2.5,
        entropy_weight=0.01,
        learning_rate=0.1,
        ppo_clip=0.3,
        ppo_epochs=2,
        baseline_decay=0.9,
    )
    controller = Controller(
        CHOICES, config=config, algorithm="reinforce", seed=4
    )
    assert controller.config == config
    assert controller.algorithm == "reinforce"
    assert controller.seed == 4
    assert controller._lstm.cell.units == 12
    assert controller._embedding.shape[1] == 6
    assert controller._optimizer.learning_rate.numpy() == pytest.approx(0.1)
    assert Controller(CHOICES).config == ControllerConfig()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"ppo_clip": 1.5}, "ppo_clip"),
        ({"ppo_epochs": 0}, "ppo_epochs"),
        ({"baseline_decay": 1.0}, "baseline_decay"),
        ({"tanh_constant": -1.0}, "tanh_constant"),
        ({"entropy_weight": -0.1}, "entropy_weight"),
    ],
)
def test_bad_hyperparameters_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Controller(CHOICES, config=tiny(**kwargs))


def test_unknown_algorithm_is_named():
    with pytest.raises(ValueError, match="algorithm"):
        Controller(CHOICES, config=tiny(), algorithm="sgd")


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="num_choices"):
        Controller((3, 0), config=tiny())
    with pytest.raises(ValueError, match="3 choices"):
        Controller((3,), lambda step, prefix: (True,), tiny()).sample(1)
    with pytest.raises(ValueError, match="no choice"):
        Controller((2,), lambda step, prefix: (False, False), tiny()).sample(1)
    controller = Controller(CHOICES, distinct_and_bounded, tiny())
    with pytest.raises(ValueError, match="invalid choice 1 at step 1"):
        controller.log_prob([[1, 1, 0]])
    with pytest.raises(ValueError, match="shape"):
        controller.log_prob([[1, 0]])
    masks = controller.masks_for([[1, 0, 0]])
    with pytest.raises(ValueError, match="invalid choice 7 at step 0"):
        controller.log_prob([[7, 0, 0]], masks)
    samples = controller.sample(2)
    with pytest.raises(ValueError, match="one per sample"):
        controller.update(samples, [1.0])
    with pytest.raises(ValueError, match="finite"):
        controller.update(samples, [1.0, float("nan")])
    with pytest.raises(ValueError, match="n >= 1"):
        controller.sample(0)


def test_random_policy_is_uniform_over_valid_choices(tmp_path):
    policy = RandomPolicy(CHOICES, distinct_and_bounded, seed=2)
    samples = policy.sample(3000)
    expected = np.log(valid_counts(samples.actions)).sum(axis=1)
    np.testing.assert_allclose(samples.log_probs, -expected, rtol=1e-6)
    np.testing.assert_allclose(policy.entropy(samples), expected, rtol=1e-6)
    assert (samples.actions[:, 1] != samples.actions[:, 0]).all()
    assert (samples.actions[:, 2] <= samples.actions[:, 0]).all()
    share = np.bincount(samples.actions[:, 0], minlength=3) / len(samples)
    np.testing.assert_allclose(share, 1 / 3, atol=0.04)
    assert policy.update(samples, np.zeros(len(samples))) == {}

    path = policy.save(str(tmp_path / "random"))
    following = policy.sample(5).actions
    resumed = RandomPolicy(CHOICES, distinct_and_bounded, seed=2)
    resumed.restore(path)
    np.testing.assert_array_equal(resumed.sample(5).actions, following)


def test_samples_take_and_concat():
    samples = Controller(CHOICES, config=tiny()).sample(5)
    parts = [samples.take([4, 0]), samples.take([2])]
    joined = Samples.concat(parts)
    assert len(joined) == 3
    np.testing.assert_array_equal(joined.actions, samples.actions[[4, 0, 2]])
    np.testing.assert_array_equal(joined.masks, samples.masks[[4, 0, 2]])
    with pytest.raises(ValueError, match="at least one"):
        Samples.concat([])


def test_make_policy_picks_by_algorithm():
    cfg = tiny()
    assert isinstance(make_policy("random", CHOICES), RandomPolicy)
    controller = make_policy("reinforce", CHOICES, None, cfg, seed=1)
    assert isinstance(controller, Controller)
    assert controller.algorithm == "reinforce" and controller.config == cfg
    with pytest.raises(ValueError, match="Unknown search algorithm"):
        make_policy("evolution", CHOICES)


def test_samples_of_the_nasfpn_space_are_valid_specs():
    from nasfpn_tf.arch.space import SearchSpace

    space = SearchSpace()
    controller = Controller(space.num_choices, space.mask, tiny())
    samples = controller.sample(8)
    for actions in samples.actions.tolist():
        space.to_spec(actions)  # raises on a masked or out-of-range choice
    counts = samples.masks.sum(axis=-1)
    np.testing.assert_allclose(
        samples.log_probs, -np.log(counts).sum(axis=1), rtol=1e-5
    )


def test_controller_stays_float32_under_mixed_precision():
    import tf_keras

    previous = tf_keras.mixed_precision.global_policy()
    tf_keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        controller = Controller((3, 4), seed=0)
        samples = controller.sample(4)
        stats = controller.update(samples, [0.0, 1.0, 0.5, 0.2])
    finally:
        tf_keras.mixed_precision.set_global_policy(previous)
    assert samples.log_probs.dtype == np.float32
    assert np.isfinite(stats["loss"])
    assert {v.dtype.name for v in controller.trainable_variables} == {"float32"}
