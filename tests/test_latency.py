"""Tests of nasfpn_tf.modeling.latency: the median of timed runs."""

import types

import pytest
import tensorflow as tf

from nasfpn_tf.modeling import latency


def test_median_counts_warmup_and_runs(monkeypatch):
    # Each call advances a fake clock by its cost: the warm-up calls cost
    # 1000 s and must not count; the timed ones cost 10, 40 and 20 ms, so
    # the median is 20 ms (the mean would be 23.3).
    costs = iter([1000.0, 1000.0, 0.010, 0.040, 0.020])
    clock = [0.0]
    calls = []

    def function(images):
        calls.append(1)
        clock[0] += next(costs)
        return images + 1.0

    monkeypatch.setattr(
        latency, "time", types.SimpleNamespace(perf_counter=lambda: clock[0])
    )
    ms = latency.median_ms(function, tf.zeros([1, 2]), runs=3, warmup=2)
    assert len(calls) == 5
    assert ms == pytest.approx(20.0)


@pytest.mark.parametrize("runs, warmup", [(0, 1), (1, -1)])
def test_bad_counts_raise(runs, warmup):
    with pytest.raises(ValueError, match="must be"):
        latency.median_ms(lambda x: x, tf.zeros([1]), runs, warmup)
