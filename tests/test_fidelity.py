"""Tests of the proxy-fidelity mode: statistics, runs, resume."""

import json
import math
import os
import pathlib

import pytest

from nasfpn_tf import config as config_lib
from nasfpn_tf.arch import known
from nasfpn_tf.search import fidelity, fidelity_report
from nasfpn_tf.search import proxy as proxy_lib


def test_noise_figures():
    def entry(rewards, published=False):
        return {
            "published": published,
            fidelity.PROXY: {
                "mean": sum(rewards) / len(rewards),
                "std": fidelity_report._std(rewards),
            },
        }

    figures = fidelity.noise_figures(
        [entry([0.1, 0.3], True), entry([0.5, 0.7]), entry([0.9, 1.1])]
    )
    within = math.sqrt(0.02)  # each spec's std is sqrt(0.02)
    assert figures["within_spec_std"] == pytest.approx(within, abs=1e-4)
    assert figures["between_spec_std"] == pytest.approx(0.4)
    assert figures["spread"] == pytest.approx(0.8)
    assert figures["spread_over_noise"] == pytest.approx(0.8 / within, abs=1e-3)
    assert figures["published_std"] == pytest.approx(within, abs=1e-4)


# --------------------------------------------------------------------------
# Runs with formula proxies.


class Crash(BaseException):
    """A simulated kill: not an Exception, so nothing catches it."""


class FormulaProxy:
    """Reward from the spec's hash, plus a seed-dependent wobble."""

    def __init__(self, scale, calls, crash_at=None):
        self.scale = scale
        self.calls = calls
        self.crash_at = crash_at

    def train(self, spec, work_dir, seed):
        if self.crash_at is not None and len(self.calls) + 1 == self.crash_at:
            raise Crash()
        self.calls.append((work_dir, seed))
        base = int(spec.canonical_key()[:6], 16) / 16**6
        reward = self.scale * base + (seed % 7) * 1e-3
        return proxy_lib.ProxyResult(reward, "ok", {"AP": reward}, 0.5)

    def release(self, work_dir):
        pass


def _config(**changes):
    base = {
        "fidelity.num_specs": 4,
        "fidelity.seeds": 2,
        "fidelity.reference.seeds": 1,
        "fidelity.bootstrap_samples": 100,
    }
    base.update(changes)
    return config_lib.override(config_lib.ExperimentConfig(), base)


def _proxies(calls, crash_at=None):
    return {
        fidelity.PROXY: FormulaProxy(0.5, calls, crash_at),
        fidelity.REFERENCE: FormulaProxy(1.0, calls, crash_at),
    }


def test_specs_are_the_published_one_and_seeded_distinct_draws():
    from nasfpn_tf.search import runner

    config = _config(**{"fidelity.num_specs": 6})
    space = runner.make_space(config)
    specs = fidelity.fidelity_specs(config, space)
    assert specs[0] == known.NASFPN_SPEC
    assert len({s.canonical_key() for s in specs}) == 6
    assert fidelity.fidelity_specs(config, space) == specs
    other = _config(**{"fidelity.num_specs": 6, "fidelity.spec_seed": 1})
    assert fidelity.fidelity_specs(other, space)[1:] != specs[1:]


def test_run_trains_every_job_and_reports(tmp_path):
    calls = []
    result = fidelity.run(_config(), str(tmp_path), proxies=_proxies(calls))
    assert len(calls) == 4 * 2 + 4 * 1
    rows = [
        json.loads(line)
        for line in (tmp_path / fidelity.LOG_FILE).read_text().splitlines()
    ]
    assert len(rows) == 12 and {r["status"] for r in rows} == {"ok"}
    # Reference rewards are 2x the proxy's hash term: the rankings agree.
    assert result["spearman"] == pytest.approx(1.0)
    assert result["kendall"] == pytest.approx(1.0)
    assert result["verdict"].startswith("usable")
    assert result["cost_ratio"] == pytest.approx(1.0)
    assert result["specs"][0]["published"]
    assert len(result["specs"][0][fidelity.PROXY]["rewards"]) == 2
    saved = json.loads((tmp_path / fidelity.REPORT_FILE).read_text())
    assert saved["spearman"] == result["spearman"]
    assert (tmp_path / fidelity.PLOT_FILE).stat().st_size > 1000
    # Children get the search's seeds for their spec.
    seeds = {row["seed"] for row in rows}
    assert len(seeds) == 8  # 4 specs x 2 seed indices


def test_rerun_trains_nothing_again(tmp_path):
    calls = []
    fidelity.run(_config(), str(tmp_path), proxies=_proxies(calls))
    again = []
    result = fidelity.run(_config(), str(tmp_path), proxies=_proxies(again))
    assert again == []
    assert result["complete_specs"] == 4


def test_resume_after_a_kill_loses_and_repeats_nothing(tmp_path):
    calls = []
    with pytest.raises(Crash):
        fidelity.run(
            _config(), str(tmp_path), proxies=_proxies(calls, crash_at=6)
        )
    assert len(calls) == 5
    # A kill mid-append leaves a torn line: dropped, its job redone.
    with open(tmp_path / fidelity.LOG_FILE, "a") as f:
        f.write('{"job": "proxy/3/1", "setting"')
    rest = []
    fidelity.run(_config(), str(tmp_path), proxies=_proxies(rest))
    assert len(rest) == 12 - 5
    assert not set(calls) & set(rest)
    rows = (tmp_path / fidelity.LOG_FILE).read_text().splitlines()
    assert len(rows) == 12
    assert len({json.loads(r)["job"] for r in rows}) == 12


def test_other_specs_in_the_directory_are_refused(tmp_path):
    fidelity.run(_config(), str(tmp_path), proxies=_proxies([]))
    with pytest.raises(fidelity.FidelityError, match="new --model_dir"):
        fidelity.run(
            _config(**{"fidelity.spec_seed": 5}),
            str(tmp_path),
            proxies=_proxies([]),
        )


def test_failed_trainings_are_left_out(tmp_path):
    class Failing(FormulaProxy):
        def train(self, spec, work_dir, seed):
            if "reference-01" in work_dir:
                return proxy_lib.ProxyResult(
                    0.0, "failed", seconds=1.0, error="OOM: too big"
                )
            return super().train(spec, work_dir, seed)

    calls = []
    result = fidelity.run(
        _config(),
        str(tmp_path),
        proxies={
            fidelity.PROXY: FormulaProxy(0.5, calls),
            fidelity.REFERENCE: Failing(1.0, calls),
        },
    )
    assert result["complete_specs"] == 3
    assert result["specs"][1][fidelity.REFERENCE]["failed"] == 1


def test_too_few_specs_are_undecided(tmp_path):
    result = fidelity.run(
        _config(**{"fidelity.num_specs": 2}),
        str(tmp_path),
        proxies=_proxies([]),
    )
    assert result["spearman"] is None
    assert result["verdict"].startswith("undecided")
    assert "n/a" in fidelity.format_table(result)


def test_reference_setting_replaces_the_proxy():
    config = _config(
        **{
            "fidelity.reference.train_steps": 55,
            "fidelity.reference.image_size": 96,
        }
    )
    reference = fidelity.setting_config(config, fidelity.REFERENCE)
    child = config_lib.proxy_experiment(reference)
    assert child.train.steps == 55 and child.model.image_size == 96
    assert fidelity.setting_config(config, fidelity.PROXY) is config


# The end-to-end run's sizes: 3 specs so that Spearman is a number, 2
# proxy seeds so that the noise is known, and steps enough for a nonzero
# held-out AP. After 2 steps every child had AP 0.0 (no ranking, verdict
# undecided); after 30 steps on 16 held-out images, 6 children of random
# specs had APs from 2.8e-5 to 1.4e-4, all different.
E2E_PROXY_STEPS = 30
E2E_REFERENCE_STEPS = 40
E2E_HELDOUT = 16
DECIDED = ("usable", "weak", "unusable")


@pytest.mark.slow
def test_fidelity_mode_end_to_end_on_tiny_settings(tmp_path, monkeypatch):
    """Real proxy and reference trainings of 3 specs: every training
    logged, Spearman a number and the verdict decided."""
    from nasfpn_tf import main

    monkeypatch.setenv("NASFPN_TF_DATA_DIR", str(tmp_path / "data"))
    config = config_lib.override(
        config_lib.ExperimentConfig(),
        {
            "search.rater": "proxy",
            "data.synthetic.num_train": 8,
            "data.synthetic.num_heldout": E2E_HELDOUT,
            "data.synthetic.num_val": 4,
            "model.image_size": 64,
            "train.batch_size": 2,
            "train.warmup_steps": 1,
            "eval.batch_size": 8,
            "search.proxy.train_steps": E2E_PROXY_STEPS,
            "search.proxy.image_size": 64,
            "search.proxy.repeats": 1,
            "search.proxy.filters": 8,
            "fidelity.num_specs": 3,
            "fidelity.seeds": 2,
            "fidelity.reference.train_steps": E2E_REFERENCE_STEPS,
            "fidelity.reference.image_size": 64,
            "fidelity.reference.repeats": 1,
            "fidelity.reference.filters": 8,
        },
    )
    model_dir = str(tmp_path / "run")
    result = main.execute("fidelity", config, model_dir)
    rows = (
        pathlib.Path(os.path.join(model_dir, fidelity.LOG_FILE))
        .read_text()
        .splitlines()
    )
    assert len(rows) == 3 * 2 + 3
    assert {json.loads(r)["status"] for r in rows} == {"ok"}
    assert result["complete_specs"] == 3
    assert isinstance(result["spearman"], float), result
    assert -1.0 <= result["spearman"] <= 1.0
    assert result["within_spec_std"] is not None
    assert result["verdict"].startswith(DECIDED), result["verdict"]
    assert os.path.exists(result["plot"])


# --------------------------------------------------------------------------
# The verdict: what the figures show, what they leave unknown.


def _figures(rho, interval, snr, within=0.01):
    return {
        "spearman": rho,
        "spearman_interval": list(interval),
        "snr": snr,
        "within_spec_std": within,
    }


def test_one_seed_leaves_the_noise_unknown_and_says_what_to_run(tmp_path):
    """A new user's first run: 5 specs, one proxy training each. The
    ranking agrees perfectly, so it is not called loose; the noise is
    unknown, and the advised rerun trains only the missing seeds."""
    one = {"fidelity.num_specs": 5, "fidelity.seeds": 1}
    calls = []
    result = fidelity.run(
        _config(**one), str(tmp_path), proxies=_proxies(calls)
    )
    assert result["spearman"] == pytest.approx(1.0)
    assert result["snr"] is None and result["within_spec_std"] is None
    text = result["verdict"]
    assert text.startswith("undecided: the proxy ranks specs like the ")
    assert "loosely" not in text
    assert "noise is unknown" in text and "fidelity.seeds: 3" in text
    rerun = []
    result = fidelity.run(
        _config(**{**one, "fidelity.seeds": 3}),
        str(tmp_path),
        proxies=_proxies(rerun),
    )
    assert len(rerun) == 5 * 2  # the two new proxy seeds per spec
    assert result["snr"] > fidelity.MIN_SNR
    assert result["verdict"].startswith("usable")


def test_a_perfect_ranking_is_never_called_loose():
    for snr, within, start in [
        (None, None, "undecided"),
        (0.5, 0.01, "weak"),
        (None, 0.0, "usable"),  # the seeds agreed exactly: no noise
        (5.0, 0.01, "usable"),
    ]:
        text = fidelity.verdict(_figures(1.0, (1.0, 1.0), snr, within))
        assert text.startswith(start), text
        assert "loosely" not in text, text
    noisy = fidelity.verdict(_figures(1.0, (1.0, 1.0), 0.5))
    assert "other seeds may reorder them" in noisy


def test_crafted_figures_reach_every_verdict():
    verdict = fidelity.verdict
    assert verdict(_figures(0.9, (0.6, 1.0), 3.0)).startswith("usable")
    loose = verdict(_figures(0.4, (-0.3, 0.9), 3.0))
    assert loose.startswith("weak: the proxy ranks specs only loosely")
    assert verdict(_figures(0.6, (0.1, 0.9), 1.0)).startswith("weak")
    for rho in (0.0, -0.5):
        text = verdict(_figures(rho, (-0.9, 0.5), 3.0))
        assert text.startswith("unusable"), text
    assert verdict(_figures(-0.5, (-1.0, 0.2), None, None)).startswith(
        "unusable"
    )


class _Noisy(FormulaProxy):
    """The spec's hash term plus a seed term as large as the specs' spread."""

    def train(self, spec, work_dir, seed):
        result = super().train(spec, work_dir, seed)
        reward = result.reward + (seed % 7) * 0.1
        return proxy_lib.ProxyResult(reward, "ok", {"AP": reward}, 0.5)


class _Reversed(FormulaProxy):
    """Ranks the specs in the reverse of the hash term's order."""

    def train(self, spec, work_dir, seed):
        result = super().train(spec, work_dir, seed)
        return proxy_lib.ProxyResult(
            1.0 - result.reward, "ok", {"AP": 1.0 - result.reward}, 0.5
        )


@pytest.mark.parametrize(
    "proxy, expected", [(_Noisy, "weak"), (_Reversed, "unusable")]
)
def test_crafted_proxies_end_weak_or_unusable(tmp_path, proxy, expected):
    calls = []
    result = fidelity.run(
        _config(**{"fidelity.num_specs": 5, "fidelity.seeds": 3}),
        str(tmp_path),
        proxies={
            fidelity.PROXY: proxy(0.5, calls),
            fidelity.REFERENCE: FormulaProxy(1.0, calls),
        },
    )
    assert result["verdict"].startswith(expected), result["verdict"]


def test_specs_that_all_earn_one_ap_are_undecided_and_say_why(tmp_path):
    class Flat(FormulaProxy):
        def train(self, spec, work_dir, seed):
            self.calls.append((work_dir, seed))
            return proxy_lib.ProxyResult(0.0, "ok", {"AP": 0.0}, 0.5)

    result = fidelity.run(
        _config(),
        str(tmp_path),
        proxies={
            fidelity.PROXY: Flat(0.5, []),
            fidelity.REFERENCE: FormulaProxy(1.0, []),
        },
    )
    assert result["complete_specs"] == 4 and result["spearman"] is None
    text = result["verdict"]
    assert text.startswith("undecided: 4 specs have both results"), text
    assert "fewer than 3" not in text
    assert "the proxy gave them all the same AP" in text
    assert "search.proxy.train_steps" in text
