"""Shared helpers of the fault tests: real processes, real kills.

Each fault test starts `python -m nasfpn_tf.main` (or a search) as a
child process, kills it with SIGKILL at chosen points, corrupts files, and
checks what a rerun makes of it. What was injected and how it ended goes
to the `pytest -m faults` summary through `record_fault`.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_DIR_ENV = "NASFPN_TF_DATA_DIR"
# The user property the conftest summary lists (see pytest_terminal_summary).
FAULT_PROPERTY = "fault"
POLL_SECONDS = 0.05
# Generous: a run starts TensorFlow and traces a detector on a shared CPU.
RUN_TIMEOUT_S = 300
_CHECKPOINT_NUMBER = re.compile(r"ckpt-(\d+)$")


def record_fault(
    record_property: Callable[[str, Any], None], fault: str, outcome: str
) -> None:
    """Notes one injected fault and what came of it for the summary.

    Args:
        record_property: pytest's fixture of the calling test.
        fault: what was done, e.g. "train: SIGKILL at steps [3, 9]".
        outcome: what the code did about it, with the figures.
    """
    record_property(FAULT_PROPERTY, f"{fault} -> {outcome}")


def shared_data_dir(tmp_path_factory: Any) -> str:
    """The generated-data cache the session's fault tests share.

    One folder under pytest's base temp dir for every test module: the
    generated set is written once per parameter set (and file-locked).
    """
    path = tmp_path_factory.getbasetemp() / "shared_data"
    path.mkdir(exist_ok=True)
    return str(path)


def child_env(data_dir: str, **extra: str) -> dict[str, str]:
    """The environment of a child run: this checkout first on the path,
    the shared generated data, TensorFlow's C++ logging quiet."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO, env.get("PYTHONPATH", "")) if p
    )
    env[DATA_DIR_ENV] = data_dir
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port of 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main_command(*flags: str) -> list[str]:
    return [sys.executable, "-m", "nasfpn_tf.main", *flags]


def start(
    command: Sequence[str], env: dict[str, str], log_path: str
) -> subprocess.Popen:
    """Starts `command` with stdout and stderr appended to `log_path`."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by `finish`
    process = subprocess.Popen(
        list(command), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    process.log = log  # type: ignore[attr-defined]
    return process


def finish(process: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> int:
    """Waits for `process` (killing it past `timeout`); its return code."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        sigkill(process)
        raise
    finally:
        process.log.close()  # type: ignore[attr-defined]


def sigkill(process: subprocess.Popen) -> int:
    """kill -9 of `process` alone, by its id; waits for it to end."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGKILL)
    code = process.wait()
    process.log.close()  # type: ignore[attr-defined]
    return code


def kill_when(
    process: subprocess.Popen,
    condition: Callable[[], bool],
    timeout: float = RUN_TIMEOUT_S,
) -> bool:
    """SIGKILLs `process` as soon as `condition()` holds.

    Returns:
        True when it was killed, False when it ended on its own first.

    Raises:
        TimeoutError: neither happened within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            process.log.close()  # type: ignore[attr-defined]
            return False
        if condition():
            sigkill(process)
            return True
        time.sleep(POLL_SECONDS)
    sigkill(process)
    raise TimeoutError(f"no kill condition within {timeout} s")


def tail(path: str, chars: int = 4000) -> str:
    """The end of a log file, for assertion messages."""
    if not os.path.exists(path):
        return "(no log)"
    with open(path, errors="replace") as f:
        return f.read()[-chars:]


def jsonl_rows(path: str) -> list[dict[str, Any]]:
    """The complete JSON rows of a .jsonl file (a torn last line is not)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except ValueError:
                continue
    return rows


def train_steps(model_dir: str) -> list[int]:
    """Steps of the train rows in `model_dir/metrics.jsonl`, in order."""
    rows = jsonl_rows(os.path.join(model_dir, "metrics.jsonl"))
    return [r["step"] for r in rows if r.get("kind") == "train"]


def checkpoint_steps(model_dir: str) -> list[int]:
    """Steps of the checkpoints the state file lists, oldest first.

    Read from the text of `checkpoints/checkpoint`, so the test process
    sees what a rerun would, without TensorFlow's fallbacks.
    """
    path = os.path.join(model_dir, "checkpoints", "checkpoint")
    if not os.path.exists(path):
        return []
    steps = []
    with open(path) as f:
        for line in f:
            if line.startswith("all_model_checkpoint_paths:"):
                name = line.split(":", 1)[1].strip().strip('"')
                match = _CHECKPOINT_NUMBER.search(name)
                if match:
                    steps.append(int(match.group(1)))
    return steps


def checkpoint_files(model_dir: str, step: int) -> list[str]:
    """The files of checkpoint `ckpt-<step>` (index and data shards)."""
    folder = os.path.join(model_dir, "checkpoints")
    prefix = f"ckpt-{step}."
    return sorted(
        os.path.join(folder, name)
        for name in os.listdir(folder)
        if name.startswith(prefix)
    )


def truncate(path: str, fraction: float = 0.5) -> int:
    """Cuts `path` to `fraction` of its size, as a write cut short does.

    Returns:
        The size it had.
    """
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * fraction))
    return size
