"""Injected faults in training: kill -9, cut and corrupted checkpoints.

The in-process tests train the stand-in detector of `test_trainer` for a
few steps, damage the newest checkpoint the way a crash mid-write or a bad
disk does, and rerun. The `slow` ones kill a real
`python -m nasfpn_tf.main --mode=train` at seeded random steps and rerun
it each time until it finishes, and kill the non-chief of a two-process
multi_worker_mirrored run on 127.0.0.1.
"""

import ast
import json
import os
import random
import time

import faults_helpers as fh
import pytest
import tensorflow as tf
from test_trainer import fast_config, tiny_detector

from nasfpn_tf.data import inputs
from nasfpn_tf.modeling import detector
from nasfpn_tf.train import checkpoints, trainer

pytestmark = pytest.mark.faults

KILL_SEED = 7
NUM_KILLS = 5
CHAIN_STEPS = 20
CHAIN_CHECKPOINT_EVERY = 4
# The tiny CLI run: 2 images a step, one log row per step, a small
# detector (one neck repeat, one head conv) to keep tracing short.
CHAIN_OVERRIDE = ",".join(
    [
        f"train.steps={CHAIN_STEPS}",
        "train.warmup_steps=1",
        "train.batch_size=2",
        "train.log_every=1",
        f"train.summary_every={CHAIN_STEPS}",
        f"train.checkpoint_every={CHAIN_CHECKPOINT_EVERY}",
        "train.keep_checkpoints=3",
        "eval.batch_size=2",
        "model.neck.repeats=1",
        "model.head.num_convs=1",
        "data.synthetic.num_train=8",
        "data.synthetic.num_heldout=4",
        "data.synthetic.num_val=4",
        "data.shuffle_buffer=8",
    ]
)


@pytest.fixture(scope="session")
def shared_data(tmp_path_factory):
    return fh.shared_data_dir(tmp_path_factory)


@pytest.fixture
def tiny_model(monkeypatch, shared_data):
    monkeypatch.setenv(inputs.DATA_DIR_ENV, shared_data)
    monkeypatch.setattr(detector, "build_detector", tiny_detector)


def _rows_since(model_dir, since):
    rows = fh.jsonl_rows(os.path.join(model_dir, "metrics.jsonl"))
    return [r for r in rows if r.get("kind") == "train" and r["time"] >= since]


# --------------------------------------------------------------------------
# The newest checkpoint damaged: the previous one is restored.


def _cut_data(files):
    (data,) = [f for f in files if ".data-" in f]
    fh.truncate(data)


def _garble_data(files):
    (data,) = [f for f in files if ".data-" in f]
    with open(data, "r+b") as f:
        f.seek(os.path.getsize(data) // 2)
        f.write(b"\xff" * 64)


def _drop_index(files):
    (index,) = [f for f in files if f.endswith(".index")]
    os.remove(index)


DAMAGE = {
    "data file cut in half": _cut_data,
    "data bytes overwritten": _garble_data,
    "index file missing": _drop_index,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(
    tiny_model, tmp_path, caplog, record_property, damage
):
    model_dir = str(tmp_path / "run")
    config = fast_config(**{"train.keep_checkpoints": 3})
    assert trainer.run("train", config, model_dir)["steps"] == 4
    assert fh.checkpoint_steps(model_dir) == [0, 2, 4]
    DAMAGE[damage](fh.checkpoint_files(model_dir, 4))

    longer = fast_config(**{"train.keep_checkpoints": 3, "train.steps": 6})
    since = time.time()
    with caplog.at_level("WARNING"):
        result = trainer.run("train", longer, model_dir)
    assert result["steps"] == 6
    assert "ckpt-4 is unreadable" in caplog.text
    assert "resuming from" in caplog.text and "ckpt-2" in caplog.text
    # Steps 3..6 were trained again from ckpt-2: rows 4 and 6 are new.
    assert fh.train_steps(model_dir) == [2, 4, 6]
    assert [r["step"] for r in _rows_since(model_dir, since)] == [4, 6]
    assert fh.checkpoint_steps(model_dir) == [0, 2, 4, 6][-3:]
    aside = os.path.join(
        checkpoints.checkpoint_dir(model_dir), checkpoints.UNREADABLE_SUBDIR
    )
    assert any(name.startswith("ckpt-4.") for name in os.listdir(aside))
    # What the rerun wrote is sound.
    latest = tf.train.latest_checkpoint(checkpoints.checkpoint_dir(model_dir))
    assert latest.endswith("ckpt-6") and checkpoints.is_finite(latest)
    fh.record_fault(
        record_property,
        f"train: newest checkpoint ckpt-4 damaged ({damage})",
        "warned, restored ckpt-2, trained steps 3..6 again, final step 6",
    )


def test_every_checkpoint_unreadable_is_a_clear_error(
    tiny_model, tmp_path, record_property
):
    model_dir = str(tmp_path / "run")
    config = fast_config()
    trainer.run("train", config, model_dir)
    damaged = []
    for step in fh.checkpoint_steps(model_dir):
        (index,) = [
            f for f in fh.checkpoint_files(model_dir, step) if ".index" in f
        ]
        open(index, "wb").close()  # an empty index: not an sstable
        damaged.append(step)
    with pytest.raises(checkpoints.UnreadableCheckpointError) as raised:
        trainer.run("train", config, model_dir)
    message = str(raised.value)
    for step in damaged:
        assert f"ckpt-{step}:" in message
    assert "to train from scratch" in message
    # Nothing was moved or forgotten: the files are the user's to inspect.
    assert fh.checkpoint_steps(model_dir) == damaged
    fh.record_fault(
        record_property,
        f"train: all {len(damaged)} checkpoints unreadable",
        "UnreadableCheckpointError listing each; files left in place",
    )


def test_garbled_checkpoint_state_file_is_rebuilt(
    tiny_model, tmp_path, caplog, record_property
):
    model_dir = str(tmp_path / "run")
    trainer.run("train", fast_config(), model_dir)
    path = os.path.join(checkpoints.checkpoint_dir(model_dir), "checkpoint")
    with open(path, "w") as f:
        f.write("not a checkpoint state {")
    since = time.time()
    with caplog.at_level("WARNING"):
        result = trainer.run(
            "train", fast_config(**{"train.steps": 6}), model_dir
        )
    # Without the rebuild TensorFlow reads "no checkpoint" and the run
    # starts again from step 0.
    assert "rebuilt it from the checkpoint files" in caplog.text
    assert result["steps"] == 6
    assert [r["step"] for r in _rows_since(model_dir, since)] == [6]
    assert fh.train_steps(model_dir) == [2, 4, 6]
    assert fh.checkpoint_steps(model_dir) == [4, 6]
    fh.record_fault(
        record_property,
        "train: checkpoint state file garbled",
        "rebuilt from the ckpt-*.index files, resumed at step 4, final step 6",
    )


# --------------------------------------------------------------------------
# kill -9 of the real command at random steps.


@pytest.mark.slow
def test_sigkill_at_random_steps_then_rerun_finishes(
    tmp_path, shared_data, record_property
):
    """kill -9 at NUM_KILLS seeded random steps, rerun after each; then the
    newest checkpoint is cut in half before the last rerun. Each rerun
    must resume from the newest sound checkpoint with the step counter
    going on, and the last must finish with every step logged once."""
    model_dir = str(tmp_path / "run")
    log = str(tmp_path / "runs.log")
    env = fh.child_env(shared_data)
    first = fh.main_command(
        "--mode=train",
        f"--model_dir={model_dir}",
        f"--params_override={CHAIN_OVERRIDE}",
    )
    # Reruns pass no config flags: they resume with the saved config.
    rerun = fh.main_command("--mode=train", f"--model_dir={model_dir}")
    targets = sorted(
        random.Random(KILL_SEED).sample(range(2, CHAIN_STEPS), NUM_KILLS)
    )
    killed_at, resumed_from = [], []
    expected_start = 1
    started = time.monotonic()
    for launch, target in enumerate(targets):
        since = time.time()
        process = fh.start(first if launch == 0 else rerun, env, log)

        def reached(target=target, since=since):
            rows = _rows_since(model_dir, since)
            return bool(rows) and rows[-1]["step"] >= target

        assert fh.kill_when(process, reached), fh.tail(log)
        rows = _rows_since(model_dir, since)
        # The run went on from the checkpoint the last kill left.
        assert rows[0]["step"] == expected_start, fh.tail(log)
        step = rows[-1]["step"]
        kept = fh.checkpoint_steps(model_dir)
        # A kill loses at most the steps since the last checkpoint (one
        # being written when the kill came does not count).
        assert step - CHAIN_CHECKPOINT_EVERY <= kept[-1] <= step, (kept, step)
        killed_at.append(step)
        resumed_from.append(kept[-1])
        expected_start = kept[-1] + 1

    # A write cut short: the newest checkpoint loses half its data file.
    kept = fh.checkpoint_steps(model_dir)
    newest, previous = kept[-1], kept[-2]
    (data,) = [
        f for f in fh.checkpoint_files(model_dir, newest) if ".data-" in f
    ]
    fh.truncate(data)
    since = time.time()
    process = fh.start(rerun, env, log)
    assert fh.finish(process) == 0, fh.tail(log)
    text = fh.tail(log, 200_000)
    assert f"ckpt-{newest} is unreadable" in text, fh.tail(log)
    rows = _rows_since(model_dir, since)
    assert rows[0]["step"] == previous + 1
    assert rows[-1]["step"] == CHAIN_STEPS
    # Every step logged once: rows of lost work were dropped on resume.
    assert fh.train_steps(model_dir) == list(range(1, CHAIN_STEPS + 1))
    assert fh.checkpoint_steps(model_dir)[-1] == CHAIN_STEPS
    seconds = time.monotonic() - started
    fh.record_fault(
        record_property,
        f"train (python -m nasfpn_tf.main): SIGKILL at steps {killed_at} "
        f"(seeded targets {targets})",
        f"resumed from checkpoints {resumed_from} with the step going on",
    )
    fh.record_fault(
        record_property,
        f"train: newest checkpoint ckpt-{newest} cut in half before the "
        "last rerun",
        f"warned, resumed from ckpt-{previous}, final step {CHAIN_STEPS}, "
        f"each step logged once; {len(targets) + 1} launches in "
        f"{seconds:.0f} s",
    )


# --------------------------------------------------------------------------
# A multi-worker run on this host: two processes, TF_CONFIG on 127.0.0.1.

MW_KILL_AT = 9
# orbit's collectives notice a dead peer by its missing heartbeats.
MW_CHIEF_STOP_TIMEOUT_S = 180


def _result(log_path: str) -> dict:
    """The `train result: {...}` a run printed last."""
    with open(log_path, errors="replace") as f:
        lines = [ln for ln in f if ln.startswith("train result: ")]
    assert lines, fh.tail(log_path)
    return ast.literal_eval(lines[-1].removeprefix("train result: "))


@pytest.mark.slow
def test_multi_worker_non_chief_killed_then_both_rerun(
    tmp_path, shared_data, record_property
):
    """Two workers of multi_worker_mirrored on 127.0.0.1 share a model_dir.
    kill -9 of the non-chief stops the chief with an error (no hang);
    rerunning both resumes from the chief's last checkpoint, both finish
    at the same step with the same loss, and only the chief wrote
    model_dir (the non-chief's saves go to its own temp folder)."""
    model_dir = str(tmp_path / "run")
    cluster = {"worker": [f"127.0.0.1:{fh.free_port()}" for _ in range(2)]}
    worker_tmp = tmp_path / "worker_tmp"
    worker_tmp.mkdir()

    def launch(index, log, *flags):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}  # fmt: skip
        extra = {"TF_CONFIG": json.dumps(tf_config)}
        if index:
            extra["TMPDIR"] = str(worker_tmp)
        return fh.start(
            fh.main_command("--mode=train", f"--model_dir={model_dir}", *flags),
            fh.child_env(shared_data, **extra),
            str(tmp_path / log),
        )

    override = f"--params_override={CHAIN_OVERRIDE}," + (
        "runtime.strategy=multi_worker_mirrored"
    )
    chief = launch(0, "chief-1.log", override)
    worker = launch(1, "worker-1.log", override)
    reached = lambda: bool(fh.train_steps(model_dir)) and (
        fh.train_steps(model_dir)[-1] >= MW_KILL_AT
    )  # fmt: skip
    assert fh.kill_when(worker, reached), fh.tail(str(tmp_path / "chief-1.log"))
    started = time.monotonic()
    code = fh.finish(chief, timeout=MW_CHIEF_STOP_TIMEOUT_S)
    stopped_after = time.monotonic() - started
    assert code != 0
    # TensorFlow reports the lost peer as an unhealthy task, or as an
    # aborted collective, depending on which the chief notices first.
    chief_log = fh.tail(str(tmp_path / "chief-1.log"), 20000)
    assert any(
        text in chief_log
        for text in ("unhealthy", "CollectiveReduce", "Restart your program")
    ), chief_log[-3000:]
    # The step the pair had reached (a step in flight at the kill may
    # have completed) and the checkpoint the rerun must resume from.
    killed_at = fh.train_steps(model_dir)[-1]
    kept = fh.checkpoint_steps(model_dir)[-1]
    assert kept < killed_at
    # Reruns pass no config flags: both resume with the saved config.
    chief = launch(0, "chief-2.log")
    worker = launch(1, "worker-2.log")
    assert fh.finish(chief) == 0, fh.tail(str(tmp_path / "chief-2.log"))
    assert fh.finish(worker) == 0, fh.tail(str(tmp_path / "worker-2.log"))
    ours, theirs = (
        _result(str(tmp_path / "chief-2.log")),
        _result(str(tmp_path / "worker-2.log")),
    )
    assert ours["steps"] == theirs["steps"] == CHAIN_STEPS
    assert ours["final_loss"] == pytest.approx(theirs["final_loss"])
    # One row per step (the non-chief logged none; the rows past the
    # checkpoint were dropped and trained again), and both reruns went on
    # from the checkpoint the kill left.
    assert fh.train_steps(model_dir) == list(range(1, CHAIN_STEPS + 1))
    for log in ("chief-2.log", "worker-2.log"):
        with open(tmp_path / log, errors="replace") as f:
            first = next(ln for ln in f if ln.startswith("train | step "))
        assert first.startswith(f"train | step {kept + 1}/"), (log, first)
    assert sorted(os.listdir(model_dir)) == [
        "checkpoints", "config.yaml", "metrics.jsonl", "train"
    ]  # fmt: skip
    assert fh.checkpoint_steps(model_dir)[-1] == CHAIN_STEPS
    assert [p.name for p in worker_tmp.iterdir()]  # its saves went here
    fh.record_fault(
        record_property,
        f"multi-worker train: kill -9 of the non-chief at step {killed_at}",
        f"chief stopped with an error after {stopped_after:.0f} s; both "
        f"reran from step {kept} to {CHAIN_STEPS}, same final loss, only "
        "the chief wrote model_dir",
    )
