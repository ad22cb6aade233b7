"""Tests of nasfpn_tf.modeling.latency: the median of timed runs."""

import pytest
import tensorflow as tf

from nasfpn_tf.modeling import latency


def test_median_counts_warmup_and_runs():
    calls = []

    def function(images):
        calls.append(1)
        return images + 1.0

    ms = latency.median_ms(function, tf.zeros([1, 2]), runs=3, warmup=2)
    assert len(calls) == 5
    assert ms >= 0


@pytest.mark.parametrize("runs, warmup", [(0, 1), (1, -1)])
def test_bad_counts_raise(runs, warmup):
    with pytest.raises(ValueError, match="must be"):
        latency.median_ms(lambda x: x, tf.zeros([1]), runs, warmup)
