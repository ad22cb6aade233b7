"""Tests for launch/*.sh: dry runs print the right commands, and only those.

Every script runs with `--dry-run` and made-up settings, with stand-ins for
`gcloud`, `gsutil` and `python3` first on PATH that record the call and fail
loudly, so nothing can reach the cloud. Printed lines are split back into
argv with `shlex`, and a remote `--command=...` is split once more.
"""

import os
import pathlib
import shlex
import shutil
import stat
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = (
    "tpu_create.sh",
    "tpu_install.sh",
    "tpu_search.sh",
    "tpu_train.sh",
    "fetch_results.sh",
    "tpu_delete.sh",
    "gpu_vm_train.sh",
)
REQUIRED = {
    "tpu_create.sh": ("TPU_NAME", "ZONE", "PROJECT", "ACCELERATOR_TYPE"),
    "tpu_install.sh": ("TPU_NAME", "ZONE", "PROJECT"),
    "tpu_search.sh": (
        "TPU_NAME",
        "ZONE",
        "PROJECT",
        "MODEL_DIR",
        "CONFIG_FILES",
    ),
    "tpu_train.sh": (
        "TPU_NAME",
        "ZONE",
        "PROJECT",
        "MODEL_DIR",
        "CONFIG_FILES",
    ),
    "fetch_results.sh": ("MODEL_DIR",),
    "tpu_delete.sh": ("TPU_NAME", "ZONE", "PROJECT"),
    "gpu_vm_train.sh": (
        "VM_NAME",
        "ZONE",
        "PROJECT",
        "MODEL_DIR",
        "CONFIG_FILES",
    ),
}
FAKED = ("gcloud", "gsutil", "python3")
FAKE_EXIT = 97
MODEL_DIR = "gs://bucket/run-1"
TPU_VERBS = ("gcloud", "compute", "tpus", "tpu-vm")


@pytest.fixture
def sandbox(tmp_path):
    """A work folder, fake cloud tools first on PATH, and two input files."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.log"
    for tool in FAKED:
        fake = bin_dir / tool
        fake.write_text(
            "#!/bin/sh\n"
            f'echo "{tool} $*" >> "{calls}"\n'
            f'echo "FAKE {tool} CALLED: a test ran a real command" >&2\n'
            f"exit {FAKE_EXIT}\n"
        )
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    work = tmp_path / "work"
    (work / "configs").mkdir(parents=True)
    (work / "configs" / "search.yaml").write_text("search: {}\n")
    (work / "spec.json").write_text('{"version": 1}\n')
    return {
        "tmp": tmp_path,
        "bin": bin_dir,
        "calls": calls,
        "work": work,
        "path": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }


def run_script(sandbox, script, *args, **settings):
    """Runs launch/SCRIPT in a clean environment holding only `settings`."""
    env = {
        "PATH": sandbox["path"],
        "HOME": str(sandbox["tmp"]),
        "LC_ALL": "C",
    }
    env.update({k: str(v) for k, v in settings.items()})
    return subprocess.run(
        [str(LAUNCH / script), *args],
        check=False,
        cwd=sandbox["work"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def dry_run(sandbox, script, *args, **settings):
    """A dry run that must succeed; returns the printed commands as argv."""
    result = run_script(sandbox, script, "--dry-run", *args, **settings)
    assert result.returncode == 0, result.stderr
    assert not sandbox["calls"].exists(), sandbox["calls"].read_text()
    lines = result.stdout.splitlines()
    assert lines, "a dry run printed no command"
    for line in lines:
        assert line.startswith("+ "), f"not a command line: {line!r}"
    return [shlex.split(line[2:]) for line in lines]


def flag(argv, name):
    """The value of --name=value in argv (exactly one expected)."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    assert len(values) == 1, (name, argv)
    return values[0]


def remote_main(command):
    """Splits a detached remote command into (env assignments, main argv)."""
    words = shlex.split(command)
    assert words[0] == "nohup" and words[1] == "env", words
    end = words.index(">")
    assert words[end : end + 3] == [">", words[end + 1], "2>&1"], words
    body = words[2:end]
    python = next(i for i, w in enumerate(body) if "=" not in w)
    env = dict(w.split("=", 1) for w in body[:python])
    return env, body[python:]


TPU = {"TPU_NAME": "nas", "ZONE": "us-central2-b", "PROJECT": "my-proj"}


# --- common behaviour -------------------------------------------------------


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints_usage_and_settings(sandbox, script):
    result = run_script(sandbox, script, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: launch/{script}" in result.stdout
    for var in REQUIRED[script]:
        assert var in result.stdout
    assert "--dry-run" in result.stdout
    assert not sandbox["calls"].exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_script_is_strict_executable_bash(script):
    path = LAUNCH / script
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert os.access(path, os.X_OK)


@pytest.mark.parametrize(
    "script, missing",
    [(s, var) for s in SCRIPTS for var in REQUIRED[s]],
)
def test_missing_setting_fails_naming_it(sandbox, script, missing):
    settings = {
        "TPU_NAME": "nas",
        "VM_NAME": "gpu",
        "ZONE": "z",
        "PROJECT": "p",
        "ACCELERATOR_TYPE": "v4-8",
        "MODEL_DIR": MODEL_DIR,
        "CONFIG_FILES": "configs/search.yaml",
        "NUM_TPUS": 2 if script == "tpu_search.sh" else 1,
    }
    del settings[missing]
    result = run_script(sandbox, script, "--dry-run", **settings)
    assert result.returncode != 0
    assert result.stdout == "", "printed commands before failing"
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: missing required setting")
    assert missing in message
    assert "--" + missing.lower().replace("_", "-") in message
    others = set(REQUIRED[script]) - {missing}
    assert not any(f"{var} (" in message for var in others)


@pytest.mark.parametrize("script", SCRIPTS)
def test_all_missing_are_named_at_once(sandbox, script):
    result = run_script(sandbox, script, "--dry-run")
    assert result.returncode != 0
    for var in REQUIRED[script]:
        assert var in result.stderr


def test_env_dry_run_equals_flag(sandbox):
    settings = dict(TPU, ACCELERATOR_TYPE="v3-8", NUM_TPUS=2)
    by_flag = run_script(sandbox, "tpu_create.sh", "--dry-run", **settings)
    by_env = run_script(sandbox, "tpu_create.sh", DRY_RUN=1, **settings)
    assert by_env.returncode == 0, by_env.stderr
    assert by_env.stdout == by_flag.stdout != ""
    assert not sandbox["calls"].exists()


def test_flags_set_the_same_settings_as_env(sandbox):
    from_env = dry_run(sandbox, "tpu_delete.sh", **TPU)
    from_flags = dry_run(
        sandbox,
        "tpu_delete.sh",
        "--tpu-name=nas",
        "--zone",
        "us-central2-b",
        "--project=my-proj",
    )
    assert from_flags == from_env


@pytest.mark.parametrize(
    "args, message",
    [
        (("--bogus=1",), "unknown flag '--bogus'"),
        (("--zone",), "flag --zone needs a value"),
        (("stray",), "unexpected argument 'stray'"),
    ],
)
def test_bad_arguments_fail_clearly(sandbox, args, message):
    result = run_script(sandbox, "tpu_delete.sh", "--dry-run", *args, **TPU)
    assert result.returncode != 0
    assert message in result.stderr


def test_real_run_reaches_gcloud(sandbox):
    # Without --dry-run the script does call gcloud (here the fake, which
    # fails): the dry-run tests pass because nothing was run, not by luck.
    result = run_script(sandbox, "tpu_delete.sh", **TPU)
    assert result.returncode == FAKE_EXIT
    assert "FAKE gcloud CALLED" in result.stderr
    call = sandbox["calls"].read_text().split()
    assert call[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "delete"]


def test_bad_yes_no_value_fails(sandbox):
    result = run_script(sandbox, "tpu_delete.sh", **TPU, DRY_RUN="maybe")
    assert result.returncode != 0
    assert "DRY_RUN must be 1 or 0" in result.stderr
    assert not sandbox["calls"].exists()


@pytest.mark.parametrize(
    "words",
    [
        ["plain", "", "two words", "it's", 'say "hi"', "$HOME", "a\\b"],
        ["--command=echo 'x' && ls", "--empty=", "tab\there", "new\nline"],
        ["~/x", "*.yaml", "a;b", "--flag=gs://b/r", "k=v w"],
    ],
)
def test_join_quoted_round_trips(words):
    result = subprocess.run(
        ["bash", "-c", 'source "$0"; join_quoted "$@"', LAUNCH / "common.sh"]
        + words,
        capture_output=True,
        text=True,
        check=True,
    )
    assert shlex.split(result.stdout) == words


# --- scripts ----------------------------------------------------------------


def test_tpu_create_one_vm(sandbox):
    (cmd,) = dry_run(sandbox, "tpu_create.sh", **TPU, ACCELERATOR_TYPE="v4-8")
    assert cmd[:6] == [*TPU_VERBS, "create", "nas"]
    assert flag(cmd, "zone") == "us-central2-b"
    assert flag(cmd, "project") == "my-proj"
    assert flag(cmd, "accelerator-type") == "v4-8"
    assert flag(cmd, "version") == "tpu-ubuntu2204-base"
    assert "--spot" not in cmd


def test_tpu_create_fleet_with_flags(sandbox):
    cmds = dry_run(
        sandbox,
        "tpu_create.sh",
        "--tpu-name=nas",
        "--zone=z",
        "--project=p",
        "--accelerator-type=v3-8",
        "--runtime-version=my-image",
        "--num-tpus=3",
        SPOT=1,
    )
    assert [c[5] for c in cmds] == ["nas-0", "nas-1", "nas-2"]
    for cmd in cmds:
        assert cmd[:5] == [*TPU_VERBS, "create"]
        assert flag(cmd, "version") == "my-image"
        assert "--spot" in cmd


@pytest.mark.parametrize("num_tpus", ["0", "two", "-1"])
def test_bad_num_tpus_fails(sandbox, num_tpus):
    result = run_script(
        sandbox, "tpu_delete.sh", "--dry-run", **TPU, NUM_TPUS=num_tpus
    )
    assert result.returncode != 0
    assert "NUM_TPUS must be an integer >= 1" in result.stderr


def test_tpu_delete_fleet(sandbox):
    cmds = dry_run(sandbox, "tpu_delete.sh", **TPU, NUM_TPUS=2)
    assert [c[:6] for c in cmds] == [
        [*TPU_VERBS, "delete", "nas-0"],
        [*TPU_VERBS, "delete", "nas-1"],
    ]
    assert all("--quiet" in c and flag(c, "zone") for c in cmds)


def test_tpu_install_builds_copies_and_installs(sandbox):
    cmds = dry_run(sandbox, "tpu_install.sh", **TPU)
    build = next(c for c in cmds if c[:4] == ["python3", "-m", "pip", "wheel"])
    assert build[-1] == str(REPO)
    scp = next(c for c in cmds if c[:5] == [*TPU_VERBS, "scp"])
    wheel = scp[5]
    assert wheel.startswith(str(REPO / "dist" / "nasfpn_tf-"))
    assert wheel.endswith("-py3-none-any.whl")
    assert scp[6] == "nas:" and flag(scp, "worker") == "all"
    ssh = cmds[-1]
    assert ssh[:6] == [*TPU_VERBS, "ssh", "nas"]
    assert flag(ssh, "worker") == "all"
    steps = [shlex.split(s) for s in flag(ssh, "command").split(" && ")]
    assert ["python3.11", "-m", "venv", "nasfpn-venv"] in steps
    pip = "nasfpn-venv/bin/pip"
    assert [pip, "install", "-q", "./" + os.path.basename(wheel)] in steps
    assert [pip, "uninstall", "-q", "-y", "tensorflow"] in steps
    tpu_tf = [pip, "install", "-q", "tensorflow-tpu==2.20.*"]
    assert steps.index(tpu_tf) > steps.index(
        [pip, "uninstall", "-q", "-y", "tensorflow"]
    )
    assert steps[-1][:2] == ["nasfpn-venv/bin/python", "-c"]


def test_tpu_install_package_skips_the_wheel(sandbox):
    cmds = dry_run(
        sandbox,
        "tpu_install.sh",
        **TPU,
        NUM_TPUS=2,
        PACKAGE="git+https://example.invalid/nasfpn_tf@v1",
    )
    assert [c[:6] for c in cmds] == [
        [*TPU_VERBS, "ssh", "nas-0"],
        [*TPU_VERBS, "ssh", "nas-1"],
    ]
    command = flag(cmds[0], "command")
    assert "install -q git+https://example.invalid/nasfpn_tf@v1" in command


SEARCH = dict(
    TPU,
    NUM_TPUS=3,
    MODEL_DIR=MODEL_DIR,
    CONFIG_FILES="configs/search.yaml gs://bucket/extra.yaml",
)


def test_tpu_search_chief_and_tuners(sandbox):
    cmds = dry_run(
        sandbox,
        "tpu_search.sh",
        **SEARCH,
        PARAMS_OVERRIDE="search.num_samples=9",
    )
    describe = cmds[0]
    assert describe[:6] == [*TPU_VERBS, "describe", "nas-0"]
    assert flag(describe, "format") == ("value(networkEndpoints[0].ipAddress)")
    oracle_ip = "ORACLE_IP_OF_nas-0"  # the dry run's stand-in answer

    scps = [c for c in cmds if c[:5] == [*TPU_VERBS, "scp"]]
    assert [c[5:7] for c in scps] == [
        ["configs/search.yaml", "nas-0:"],
        ["configs/search.yaml", "nas-1:"],
        ["configs/search.yaml", "nas-2:"],
    ]
    launches = [
        c
        for c in cmds
        if c[:5] == [*TPU_VERBS, "ssh"]
        and flag(c, "command").startswith("nohup ")
    ]
    assert [c[5] for c in launches] == ["nas-0", "nas-1", "nas-2"]
    mains = []
    for cmd, tuner_id in zip(launches, ["chief", "tuner0", "tuner1"]):
        assert flag(cmd, "worker") == "0"
        env, argv = remote_main(flag(cmd, "command"))
        assert env == {
            "PYTHONUNBUFFERED": "1",
            "KERASTUNER_TUNER_ID": tuner_id,
            "KERASTUNER_ORACLE_IP": oracle_ip,
            "KERASTUNER_ORACLE_PORT": "8000",
        }
        mains.append(argv)
    assert mains[0] == mains[1] == mains[2]
    assert mains[0] == [
        "nasfpn-venv/bin/python",
        "-m",
        "nasfpn_tf.main",
        "--mode=search",
        f"--model_dir={MODEL_DIR}",
        "--config_file=search.yaml",
        "--config_file=gs://bucket/extra.yaml",
        "--params_override=search.num_samples=9",
        "--tpu=local",
    ]
    # Launch order: chief first; then the chief's log streams.
    follow = cmds[-1]
    assert follow[5] == "nas-0"
    assert shlex.split(flag(follow, "command"))[:3] == ["tail", "-n", "+1"]
    assert "nasfpn-search.log" in flag(follow, "command")


def test_tpu_search_given_oracle_and_follow(sandbox):
    cmds = dry_run(
        sandbox,
        "tpu_search.sh",
        **SEARCH,
        ORACLE_IP="10.0.0.7",
        ORACLE_PORT=9999,
        FOLLOW="tuner1",
    )
    assert not any("describe" in c for c in cmds)
    env, _ = remote_main(flag(cmds[1], "command"))
    assert env["KERASTUNER_ORACLE_IP"] == "10.0.0.7"
    assert env["KERASTUNER_ORACLE_PORT"] == "9999"
    assert cmds[-1][5] == "nas-2"  # tuner1 runs on the third VM
    assert flag(cmds[-1], "command").startswith("tail ")


def test_tpu_search_no_follow(sandbox):
    cmds = dry_run(sandbox, "tpu_search.sh", **SEARCH, FOLLOW=0)
    assert not any(
        flag(c, "command").startswith("tail") for c in cmds if "ssh" in c
    )


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"NUM_TPUS": 1}, "NUM_TPUS must be an integer >= 2"),
        ({"FOLLOW": "tuner7"}, "FOLLOW must be 0 or one of: chief tuner0"),
        ({"MODEL_DIR": "/tmp/run"}, "MODEL_DIR must be a gs:// path"),
        ({"CONFIG_FILES": "nope.yaml"}, "config_file file not found"),
        ({"ORACLE_PORT": "http"}, "ORACLE_PORT must be an integer"),
    ],
)
def test_tpu_search_bad_settings(sandbox, settings, message):
    result = run_script(
        sandbox, "tpu_search.sh", "--dry-run", **{**SEARCH, **settings}
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == "", "printed commands before failing"


TRAIN = dict(TPU, MODEL_DIR=MODEL_DIR, CONFIG_FILES="configs/search.yaml")


def test_tpu_train(sandbox):
    cmds = dry_run(sandbox, "tpu_train.sh", **TRAIN, ARCH="spec.json")
    scp, launch, follow = cmds
    assert scp[:8] == [
        *TPU_VERBS,
        "scp",
        "configs/search.yaml",
        "spec.json",
        "nas:",
    ]
    assert launch[:6] == [*TPU_VERBS, "ssh", "nas"]
    assert flag(launch, "worker") == "0"
    env, argv = remote_main(flag(launch, "command"))
    assert env == {"PYTHONUNBUFFERED": "1"}
    assert argv == [
        "nasfpn-venv/bin/python",
        "-m",
        "nasfpn_tf.main",
        "--mode=train_and_eval",
        f"--model_dir={MODEL_DIR}",
        "--config_file=search.yaml",
        "--arch=spec.json",
        "--tpu=local",
    ]
    assert "nasfpn-train_and_eval.log" in flag(follow, "command")


def test_tpu_train_trains_a_supernet_on_the_tpu(sandbox):
    cmds = dry_run(sandbox, "tpu_train.sh", **TRAIN, MODE="supernet")
    _, argv = remote_main(flag(cmds[1], "command"))
    assert argv[3] == "--mode=supernet"
    assert argv[-1] == "--tpu=local"
    assert "nasfpn-supernet.log" in flag(cmds[2], "command")


def test_tpu_train_quotes_awkward_values(sandbox):
    override = "data.train_path=gs://b/it's here/*.tfrecord"
    cmds = dry_run(
        sandbox,
        "tpu_train.sh",
        "--follow=0",
        **TRAIN,
        MODE="eval",
        PARAMS_OVERRIDE=override,
        REMOTE_ENV="TPU_STDERR_LOG_LEVEL=0 XLA_FLAGS=--a=1",
        ARCH="gs://bucket/search/best_spec.json",
    )
    assert len(cmds) == 2  # scp of the config, the launch; nothing streamed
    env, argv = remote_main(flag(cmds[1], "command"))
    assert env["TPU_STDERR_LOG_LEVEL"] == "0"
    assert env["XLA_FLAGS"] == "--a=1"
    assert "--mode=eval" in argv
    assert "--arch=gs://bucket/search/best_spec.json" in argv
    assert flag(argv, "params_override") == override


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"MODE": "search"},
            "MODE must be train, eval, train_and_eval or supernet",
        ),
        ({"MODEL_DIR": "runs/x"}, "MODEL_DIR must be a gs:// path"),
        ({"ARCH": "missing.json"}, "arch file not found: 'missing.json'"),
        ({"REMOTE_ENV": "A=1 oops"}, "REMOTE_ENV words must be VAR=VALUE"),
        (
            {"CONFIG_FILES": "configs/search.yaml other/search.yaml"},
            "both named 'search.yaml'",
        ),
    ],
)
def test_tpu_train_bad_settings(sandbox, settings, message):
    (sandbox["work"] / "other").mkdir()
    (sandbox["work"] / "other" / "search.yaml").write_text("{}\n")
    result = run_script(
        sandbox, "tpu_train.sh", "--dry-run", **{**TRAIN, **settings}
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == ""


def test_fetch_results_defaults(sandbox):
    cmds = dry_run(sandbox, "fetch_results.sh", MODEL_DIR=MODEL_DIR + "/")
    assert cmds[0] == ["mkdir", "-p", "results/run-1"]
    items = ["config.yaml", "best_spec.json", "history.jsonl", "metrics.jsonl"]
    expected = []
    for item in items:
        expected.append(["gsutil", "-q", "ls", f"{MODEL_DIR}/{item}"])
        expected.append(
            [
                "gsutil",
                "-m",
                "cp",
                "-r",
                f"{MODEL_DIR}/{item}",
                "results/run-1/",
            ]
        )
    assert cmds[1:] == expected


def test_fetch_results_items_and_dest(sandbox):
    cmds = dry_run(
        sandbox,
        "fetch_results.sh",
        "--dest=my results",
        MODEL_DIR=MODEL_DIR,
        ITEMS="best_spec.json export",
    )
    copies = [c for c in cmds if c[:3] == ["gsutil", "-m", "cp"]]
    assert [c[4:] for c in copies] == [
        [f"{MODEL_DIR}/best_spec.json", "my results/"],
        [f"{MODEL_DIR}/export", "my results/"],
    ]


GPU = {
    "VM_NAME": "gpu-1",
    "ZONE": "us-central1-a",
    "PROJECT": "my-proj",
    "MODEL_DIR": MODEL_DIR,
    "CONFIG_FILES": "configs/search.yaml",
}


def test_gpu_vm_train_create_install_train_delete(sandbox):
    cmds = dry_run(sandbox, "gpu_vm_train.sh", **GPU, ARCH="spec.json")
    verbs = [c[:4] for c in cmds if c[0] == "gcloud"]
    assert verbs == [
        ["gcloud", "compute", "instances", "create"],
        ["gcloud", "compute", "ssh", "gpu-1"],
        ["gcloud", "compute", "scp", "configs/search.yaml"],
        ["gcloud", "compute", "ssh", "gpu-1"],
        ["gcloud", "compute", "ssh", "gpu-1"],
        ["gcloud", "compute", "instances", "delete"],
    ]
    gcloud = [c for c in cmds if c[0] == "gcloud"]
    create, check, scp, install, train, delete = gcloud
    assert create[4] == "gpu-1"
    assert flag(create, "accelerator") == "type=nvidia-tesla-v100,count=4"
    assert flag(create, "image-project") == "deeplearning-platform-release"
    assert flag(create, "maintenance-policy") == "TERMINATE"
    assert "nvidia-smi" in flag(check, "command")
    assert scp[4] == "spec.json" and scp[5].endswith(".whl")
    assert scp[6] == "gpu-1:"
    assert "install -q 'tensorflow[and-cuda]==2.20.*'" in flag(
        install, "command"
    )
    words = shlex.split(flag(train, "command"))
    assert words[:2] == ["env", "PYTHONUNBUFFERED=1"]
    assert words[2:] == [
        "nasfpn-venv/bin/python",
        "-m",
        "nasfpn_tf.main",
        "--mode=train_and_eval",
        f"--model_dir={MODEL_DIR}",
        "--config_file=search.yaml",
        "--arch=spec.json",
        "--params_override=runtime.strategy=mirrored",
    ]
    assert delete[4] == "gpu-1" and "--quiet" in delete
    assert all(flag(c, "zone") == "us-central1-a" for c in gcloud)


def test_gpu_vm_train_keep_vm_and_builtin_gpus(sandbox):
    result = run_script(
        sandbox,
        "gpu_vm_train.sh",
        "--dry-run",
        "--machine-type=a2-highgpu-2g",
        **GPU,
        ACCELERATOR="",
        KEEP_VM=1,
        PACKAGE="nasfpn_tf==0.1.0",
        PARAMS_OVERRIDE="train.batch_size=8",
    )
    assert result.returncode == 0, result.stderr
    cmds = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
    create = cmds[0]
    assert flag(create, "machine-type") == "a2-highgpu-2g"
    assert not any(a.startswith("--accelerator") for a in create)
    assert not any(
        c[:4] == ["gcloud", "compute", "instances", "delete"] for c in cmds
    )
    assert "kept gpu-1" in result.stderr
    train = shlex.split(flag(cmds[-1], "command"))
    assert flag(train, "params_override") == (
        "runtime.strategy=mirrored,train.batch_size=8"
    )
    assert not any(c[0] == "python3" for c in cmds)  # PACKAGE: no wheel


@pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed"
)
def test_shellcheck_passes():
    scripts = sorted(str(p) for p in LAUNCH.glob("*.sh"))
    assert len(scripts) == len(SCRIPTS) + 1  # + common.sh
    result = subprocess.run(
        ["shellcheck", *scripts],
        check=False,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"REMOTE_ENV": "oops"}, "REMOTE_ENV words must be VAR=VALUE"),
        ({"KEEP_VM": "sometimes"}, "KEEP_VM must be 1 or 0"),
        ({"MODE": "export"}, "MODE must be train, eval or train_and_eval"),
    ],
)
def test_gpu_vm_train_bad_settings_fail_before_the_vm(
    sandbox, settings, message
):
    result = run_script(
        sandbox,
        "gpu_vm_train.sh",
        "--dry-run",
        **{**GPU, "PACKAGE": "nasfpn_tf", **settings},
    )
    assert result.returncode != 0
    assert message in result.stderr
    assert "instances create" not in result.stdout
