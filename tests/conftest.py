"""Shared fixtures: seeds everything, quiets TensorFlow."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest

# pytest-timeout's limit for a `slow` test that sets none itself (the
# default, pyproject's `timeout`, fits the default suite): the longest slow
# tests train real detectors for minutes on a shared CPU.
SLOW_TEST_TIMEOUT_S = 1200


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """One generated-data cache for every test of the session that asks
    for it (`$NASFPN_TF_DATA_DIR` while the session runs)."""
    from nasfpn_tf.data import inputs

    path = str(tmp_path_factory.mktemp("data"))
    previous = os.environ.get(inputs.DATA_DIR_ENV)
    os.environ[inputs.DATA_DIR_ENV] = path
    yield path
    if previous is None:
        del os.environ[inputs.DATA_DIR_ENV]
    else:
        os.environ[inputs.DATA_DIR_ENV] = previous


@pytest.fixture(autouse=True)
def _seed():
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    yield
    tf_keras.backend.clear_session()


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker(
            "timeout"
        ):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT_S))


def pytest_terminal_summary(terminalreporter):
    """Lists each fault the `faults` tests injected and how it ended.

    Tests note faults with `record_property("fault", text)` (see
    `faults_helpers.record_fault`); a `faults` test that failed before
    noting one is listed by its id.
    """
    lines = []
    for status in ("passed", "failed", "error"):
        for report in terminalreporter.stats.get(status, []):
            if getattr(report, "when", "") != "call":
                continue
            if "faults" not in getattr(report, "keywords", {}):
                continue
            notes = [
                value
                for name, value in report.user_properties
                if name == "fault"
            ]
            for note in notes or [report.nodeid]:
                lines.append(f"{status.upper():6}  {note}")
    if lines:
        terminalreporter.section("injected faults and outcomes")
        for line in lines:
            terminalreporter.write_line(line)
