"""The quickstart: `python -m nasfpn_tf.main --mode=search` with no flags is
the shared-weight search, and its end is what the README says it is (the
best spec's supernet reward beside the published spec's and the random
specs' median, and a train command that runs as printed). The run here is
the same command shrunk by `--params_override`; the full-size run's time is
measured, not asserted (README, Quickstart)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import faults_helpers as fh
import pytest

from nasfpn_tf import config as config_lib

# The quickstart's sizes, shrunk to seconds.
SHRUNK = {
    "search.proxy.image_size": 64,
    "search.proxy.filters": 8,
    "train.batch_size": 2,
    "train.warmup_steps": 1,
    "eval.batch_size": 2,
    "data.synthetic.num_train": 8,
    "data.synthetic.num_heldout": 4,
    "data.synthetic.num_val": 4,
    "data.shuffle_buffer": 8,
    "search.num_samples": 6,
    "search.samples_per_update": 3,
    "search.supernet.train_steps": 4,
    "search.supernet.warmup_steps": 2,
}
BASELINES = re.compile(
    r"On the supernet: best found (\S+), published spec (\S+), median of "
    r"(\d+) random specs (\S+) \(held-out AP; (\S+)\)"
)


def test_the_quickstart_is_a_supernet_search_of_200_specs_or_more():
    search = config_lib.ExperimentConfig().search
    assert search.rater == "supernet"
    assert search.num_samples >= 200
    # The README's fidelity figures are this supernet's.
    assert (
        search.supernet.train_steps,
        search.supernet.warmup_steps,
        search.supernet.bn_mode,
    ) == (600, 300, "inherited")


def _run(flags, env, log):
    with open(log, "w") as out:
        done = subprocess.run(
            fh.main_command(*flags),
            cwd=fh.REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=fh.RUN_TIMEOUT_S,
            check=False,
        )
    with open(log) as f:
        text = f.read()
    assert done.returncode == 0, text[-4000:]
    return text


def test_the_quickstart_prints_its_comparison_and_a_train_command(tmp_path):
    model_dir = str(tmp_path / "search")
    override = ",".join(f"{k}={v}" for k, v in SHRUNK.items())
    # Its own generated data, as a newcomer's first run has.
    env = fh.child_env(str(tmp_path / "data"))
    out = _run(
        [
            "--mode=search",
            f"--model_dir={model_dir}",
            f"--params_override={override}",
        ],
        env,
        str(tmp_path / "search.log"),
    )
    # Every sample rated on the supernet, none trained.
    assert f"{SHRUNK['search.num_samples']} samples (" in out
    assert re.search(r"\(\d+ rated, \d+ cached, 0 failed\)", out), out[-3000:]
    with open(os.path.join(model_dir, "history.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    assert len(rows) == SHRUNK["search.num_samples"]
    # The comparison on the same supernet, as printed and as written.
    match = BASELINES.search(out)
    assert match, out[-3000:]
    best, published, count, median, path = match.groups()
    with open(path) as f:
        written = json.load(f)
    assert float(best) == pytest.approx(written["best"], abs=5e-5)
    assert float(published) == pytest.approx(written["published"], abs=5e-5)
    assert float(median) == pytest.approx(written["random_median"], abs=5e-5)
    assert int(count) == written["random_specs"] >= 5
    assert written["best"] == max(r["reward"] for r in rows)
    # The train command is complete and runs as printed (shrunk again).
    (line,) = [x for x in out.splitlines() if x.startswith("Train it: ")]
    command = shlex.split(line[len("Train it: ") :])
    assert "..." not in line and "BUCKET" not in line
    assert command[:3] == ["python", "-m", "nasfpn_tf.main"]
    flags = dict(f.split("=", 1) for f in command[3:])
    assert flags["--mode"] == "train_and_eval"
    assert os.path.exists(flags["--config_file"])
    assert os.path.exists(flags["--arch"])
    trained = _run(
        [*command[3:], "--params_override=train.steps=2"],
        env,
        str(tmp_path / "train.log"),
    )
    run = config_lib.load_config(
        [os.path.join(flags["--model_dir"], "config.yaml")]
    )
    assert run.model.neck.arch == flags["--arch"]
    assert "train_and_eval result:" in trained
