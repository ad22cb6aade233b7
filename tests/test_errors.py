"""UserError: one base for errors the command line reports in one line."""

import importlib
import inspect
import pkgutil
import subprocess
import sys

import pytest

import nasfpn_tf
from nasfpn_tf import errors
from nasfpn_tf import main as main_lib

# Errors a user can fix (input, run directory); each must be a UserError.
USER_FACING = {
    "nasfpn_tf.config.schema": ["ConfigError"],
    "nasfpn_tf.arch.spec": ["SpecError"],
    "nasfpn_tf.arch.space": ["SpaceError"],
    "nasfpn_tf.data.pipeline": ["UnusableDataError"],
    "nasfpn_tf.data.dataset": ["DatasetError"],
    "nasfpn_tf.data.sources": ["SourceError"],
    "nasfpn_tf.train.checkpoints": ["UnreadableCheckpointError"],
    "nasfpn_tf.search.history": ["HistoryError"],
    "nasfpn_tf.search.fidelity": ["FidelityError"],
    "nasfpn_tf.predict": ["PredictError"],
    "nasfpn_tf.files": ["JsonlError", "JsonFileError"],
}


@pytest.mark.parametrize("module", sorted(USER_FACING))
def test_user_facing_errors_derive_from_user_error(module):
    loaded = importlib.import_module(module)
    for name in USER_FACING[module]:
        error = getattr(loaded, name)
        assert issubclass(error, errors.UserError), f"{module}.{name}"
        assert main_lib.is_user_error(error("bad"))


# Bases every exception has; a UserError needs a builtin base beyond these.
_GENERIC_BASES = (Exception, BaseException, object)


def _specific_builtin_bases(error: type) -> list[type]:
    return [
        b
        for b in error.__mro__
        if b.__module__ == "builtins" and b not in _GENERIC_BASES
    ]


def test_every_user_error_keeps_a_builtin_base():
    # Library callers catch ValueError / RuntimeError as before.
    checked = set()
    for info in pkgutil.walk_packages(nasfpn_tf.__path__, "nasfpn_tf."):
        module = importlib.import_module(info.name)
        for _, value in inspect.getmembers(module, inspect.isclass):
            if (
                issubclass(value, errors.UserError)
                and value is not errors.UserError
            ):
                assert _specific_builtin_bases(value), value
                checked.add(value)
    listed = {
        getattr(importlib.import_module(m), n)
        for m, names in USER_FACING.items()
        for n in names
    }
    assert listed <= checked


def test_a_user_error_without_a_builtin_base_is_caught():
    class Bare(errors.UserError):
        pass

    class Kept(errors.UserError, RuntimeError):
        pass

    assert _specific_builtin_bases(Bare) == []
    assert _specific_builtin_bases(Kept) == [RuntimeError]


def test_other_errors_are_not_user_errors():
    assert not main_lib.is_user_error(ZeroDivisionError("x"))
    assert not main_lib.is_user_error(KeyError("x"))


def test_cli_main_prints_a_user_error_in_one_line(monkeypatch):
    def fail(argv):
        raise errors.UserError("config.yaml: model.colour: unknown key")

    monkeypatch.setattr(main_lib, "main", fail)
    with pytest.raises(SystemExit) as raised:
        main_lib.cli_main(["prog"])
    assert str(raised.value) == "Error: config.yaml: model.colour: unknown key"


def test_cli_main_lets_other_errors_through(monkeypatch):
    def fail(argv):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(main_lib, "main", fail)
    with pytest.raises(ZeroDivisionError):
        main_lib.cli_main(["prog"])


def test_describe_error_cuts_long_messages():
    text = errors.describe_error(ValueError("x" * 10_000))
    assert len(text) == errors.MAX_ERROR_CHARS
    assert text.startswith("ValueError: xxx") and text.endswith("...")


def test_describe_error_keeps_the_first_lines():
    error = RuntimeError("first\n\n  second  \nthird")
    assert (
        errors.describe_error(error)
        == "RuntimeError: first\n\n  second  \nthird"
    )
    assert (
        errors.describe_error(error, max_lines=2)
        == "RuntimeError: first second"
    )
    assert errors.describe_error(error, max_chars=12) == "RuntimeEr..."


def test_transient_errors_are_worth_another_try():
    import tensorflow as tf

    assert errors.is_transient_error(tf.errors.UnavailableError(None, None, ""))
    assert errors.is_transient_error(tf.errors.AbortedError(None, None, ""))
    assert errors.is_transient_error(ConnectionResetError())
    assert errors.is_transient_error(TimeoutError())
    oom = tf.errors.ResourceExhaustedError(None, None, "OOM")
    assert not errors.is_transient_error(oom)
    assert not errors.is_transient_error(ValueError("cannot build"))


def test_error_rules_load_and_answer_without_tensorflow():
    code = (
        "import errno, sys\n"
        "from nasfpn_tf import errors\n"
        "full = OSError(errno.ENOSPC, 'No space left on device')\n"
        "assert errors.storage_error_of(RuntimeError()) is None\n"
        "try:\n"
        "    raise RuntimeError('wrapped') from full\n"
        "except RuntimeError as error:\n"
        "    assert errors.storage_error_of(error) is full\n"
        "assert not errors.is_transient_error(ValueError())\n"
        "assert errors.is_transient_error(TimeoutError())\n"
        "assert 'tensorflow' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
