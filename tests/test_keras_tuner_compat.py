"""The KerasTuner the search's adapter (nasfpn_tf/search/oracle.py) needs.

One check per KerasTuner API the adapter relies on, public or private,
each failing with the API's name, and the version range of
pyproject.toml. A KerasTuner upgrade that breaks the search fails here
first, saying where; widen the range only when this file passes.
"""

import ast
import contextlib
import inspect
import pathlib
import re
import tomllib

import keras_tuner as kt
import pytest
from keras_tuner.engine import base_tuner
from keras_tuner.engine import trial as trial_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
ADAPTER = "nasfpn_tf/search/oracle.py"


@contextlib.contextmanager
def _api(name):
    """Turns any failure of the body into one naming the API."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 (reported, with its type)
        pytest.fail(
            f"KerasTuner {kt.__version__}: `{name}`, which {ADAPTER} relies "
            f"on, is missing or changed: {type(error).__name__}: {error}",
            pytrace=False,
        )


def _requirement():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (requirement,) = [
        r for r in project["dependencies"] if r.startswith("keras-tuner")
    ]
    return requirement


def test_installed_version_is_in_the_pinned_range():
    from packaging.requirements import Requirement

    requirement = Requirement(_requirement())
    assert requirement.specifier.contains(kt.__version__), (
        f"keras_tuner {kt.__version__} is outside {requirement} "
        "(pyproject.toml); run this file against it before widening"
    )
    assert requirement.specifier.contains("1.4.8")  # the version checked


def test_no_module_but_the_adapter_imports_keras_tuner():
    importers = []
    for path in sorted((REPO / "nasfpn_tf").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(re.match(r"keras_tuner\b", n) for n in names):
                importers.append(str(path.relative_to(REPO)))
    assert set(importers) == {ADAPTER}, importers


def test_oracle_constructor_takes_the_adapter_arguments():
    with _api("keras_tuner.Oracle.__init__"):
        oracle = kt.Oracle(
            objective=kt.Objective("reward", "max"),
            max_trials=3,
            hyperparameters=kt.HyperParameters(),
            allow_new_entries=False,
            tune_new_entries=False,
            max_retries_per_trial=0,
            seed=1,
        )
        assert oracle.objective.name == "reward"
        assert oracle.objective.direction == "max"
        assert oracle.max_trials == 3


@pytest.mark.parametrize(
    "method, parameters",
    [
        ("create_trial", ["tuner_id"]),
        ("update_trial", ["trial_id", "metrics", "step"]),
        ("end_trial", ["trial"]),
        ("get_trial", ["trial_id"]),
        ("populate_space", ["trial_id"]),
        ("get_space", []),
        ("save", []),
        ("reload", []),
    ],
)
def test_oracle_methods_the_adapter_overrides_or_calls(method, parameters):
    with _api(f"keras_tuner.Oracle.{method}"):
        signature = inspect.signature(_original(kt.Oracle, method))
        assert list(signature.parameters)[1:] == parameters


def _original(cls, name):
    """Method `name` of `cls`, or the one `keras_tuner.synchronized` wraps."""
    function = getattr(cls, name)
    cells = [c.cell_contents for c in function.__closure__ or ()]
    wrapped = [c for c in cells if getattr(c, "__name__", None) == name]
    return wrapped[0] if wrapped else function


def test_hyperparameters_hold_int_choices_by_name():
    with _api("keras_tuner.HyperParameters.Int / .space / .values / .get"):
        hps = kt.HyperParameters()
        hps.Int("cell0.input0", 0, 4)
        (hp,) = hps.space
        assert (hp.name, hp.min_value, hp.max_value) == ("cell0.input0", 0, 4)
        copy = hps.copy()
        copy.values = {"cell0.input0": 3}
        assert copy.get("cell0.input0") == 3


def test_trial_statuses_the_adapter_uses():
    with _api("keras_tuner.engine.trial.TrialStatus"):
        status = trial_lib.TrialStatus
        names = ("RUNNING", "IDLE", "STOPPED", "COMPLETED", "INVALID")
        assert all(isinstance(getattr(status, n), str) for n in names)


def test_trial_carries_values_metrics_and_crosses_grpc():
    with _api("keras_tuner.engine.trial.Trial (metrics, to/from_proto)"):
        hps = kt.HyperParameters()
        hps.Int("step", 0, 2)
        hps.values = {"step": 2}
        trial = trial_lib.Trial(
            hps, trial_id="000004", status=trial_lib.TrialStatus.RUNNING
        )
        assert not trial.metrics.exists("reward")
        trial.metrics.register("reward", direction="max")
        trial.metrics.update("reward", 0.5, step=0)
        trial.score, trial.message = 0.5, "ok"
        again = trial_lib.Trial.from_proto(trial.to_proto())
        assert again.trial_id == "000004"
        assert again.hyperparameters.get("step") == 2
        assert again.status == trial_lib.TrialStatus.RUNNING
        assert again.metrics.get_last_value("reward") == 0.5


class _Recorder(kt.Oracle):
    """A stand-in oracle that records what the tuner calls."""

    def __init__(self):
        super().__init__(objective=kt.Objective("reward", "max"))
        self.ended, self.updated = [], []

    def end_trial(self, trial):
        self.ended.append(trial.trial_id)


class _Tuner(base_tuner.BaseTuner):
    def save(self):
        pass


def _clear_distribution(monkeypatch):
    for name in ("TUNER_ID", "ORACLE_IP", "ORACLE_PORT"):
        monkeypatch.delenv(f"KERASTUNER_{name}", raising=False)


def test_base_tuner_takes_oracle_directory_and_project(tmp_path, monkeypatch):
    _clear_distribution(monkeypatch)
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner7")
    with _api("keras_tuner.engine.base_tuner.BaseTuner.__init__, .tuner_id"):
        oracle = _Recorder()
        tuner = _Tuner(
            oracle=oracle, directory=str(tmp_path), project_name="trials"
        )
        assert tuner.oracle is oracle and tuner.tuner_id == "tuner7"


def test_base_tuner_hooks_end_the_trial_on_the_oracle(tmp_path, monkeypatch):
    _clear_distribution(monkeypatch)
    with _api("keras_tuner.engine.base_tuner.BaseTuner.on_*"):
        oracle = _Recorder()
        tuner = _Tuner(
            oracle=oracle, directory=str(tmp_path), project_name="trials"
        )
        trial = trial_lib.Trial(oracle.get_space(), trial_id="000001")
        tuner.on_search_begin()
        tuner.on_trial_begin(trial)
        tuner.on_trial_end(trial)
        tuner.on_search_end()
        assert oracle.ended == ["000001"]
        assert "trial" in inspect.signature(tuner.run_trial).parameters


def test_base_tuner_wraps_a_workers_oracle_in_a_grpc_client(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner1")
    monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
    monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "1")
    with _api("BaseTuner's OracleClient in a worker"):
        tuner = _Tuner(
            oracle=_Recorder(), directory=str(tmp_path), project_name="trials"
        )
        client = tuner.oracle
        assert not isinstance(client, kt.Oracle)
        for method in ("create_trial", "update_trial", "end_trial"):
            assert callable(getattr(client, method)), method
        assert callable(client.get_trial)


def test_private_chief_rule_of_distribute_utils(monkeypatch):
    """Private: keras_tuner.src.distribute.utils, behind `oracle.role`."""
    _clear_distribution(monkeypatch)
    with _api("keras_tuner.src.distribute.utils.has/is_chief_oracle"):
        from keras_tuner.src.distribute import utils

        assert not utils.has_chief_oracle()
        monkeypatch.setenv("KERASTUNER_ORACLE_IP", "127.0.0.1")
        with pytest.raises(RuntimeError, match="KERASTUNER_ORACLE_PORT"):
            utils.has_chief_oracle()
        monkeypatch.setenv("KERASTUNER_ORACLE_PORT", "8000")
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "chief")
        assert utils.has_chief_oracle() and utils.is_chief_oracle()
        monkeypatch.setenv("KERASTUNER_TUNER_ID", "tuner0")
        assert utils.has_chief_oracle() and not utils.is_chief_oracle()


def test_private_grpc_servicer_forwards_to_the_oracle():
    """Private: keras_tuner.src.protos and oracle_chief.OracleServicer,
    behind `oracle.serve`."""
    with _api("keras_tuner.src.distribute.oracle_chief.OracleServicer"):
        from keras_tuner.src import protos
        from keras_tuner.src.distribute import oracle_chief

        assert callable(protos.get_service_grpc().add_OracleServicer_to_server)

        class Oracle(_Recorder):
            def create_trial(self, tuner_id):
                return trial_lib.Trial(
                    self.get_space(), trial_id=tuner_id, status="RUNNING"
                )

            def update_trial(self, trial_id, metrics, step=0):
                self.updated.append((trial_id, dict(metrics), step))
                return self.create_trial(trial_id)

        oracle = Oracle()
        servicer = oracle_chief.OracleServicer(oracle)
        service = protos.get_service()
        response = servicer.CreateTrial(
            service.CreateTrialRequest(tuner_id="000003"), None
        )
        assert response.trial.trial_id == "000003"
        metrics = {"reward": 0.5}
        servicer.UpdateTrial(
            service.UpdateTrialRequest(
                trial_id="000003", metrics=metrics, step=0
            ),
            None,
        )
        assert oracle.updated == [("000003", metrics, 0)]
        trial = trial_lib.Trial(oracle.get_space(), trial_id="000003")
        servicer.EndTrial(service.EndTrialRequest(trial=trial.to_proto()), None)
        assert oracle.ended == ["000003"]
