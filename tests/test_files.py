"""Tests for nasfpn_tf.files: atomic writes, local and remote."""

import os
import pathlib
import re

import pytest
import tensorflow as tf

import nasfpn_tf
from nasfpn_tf import files


@pytest.mark.parametrize(
    ("path", "local"),
    [
        ("/tmp/x", True),
        ("relative/x", True),
        ("file:///tmp/x", True),
        ("gs://bucket/x", False),
        ("ram://x", False),
    ],
)
def test_is_local(path, local):
    assert files.is_local(path) is local


def test_text_and_bytes_replace_the_file_and_leave_no_temporary(tmp_path):
    path = tmp_path / "new" / "a.txt"
    files.write_atomic(str(path), "one")
    files.write_atomic(f"file://{path}", b"two")
    assert path.read_bytes() == b"two"
    assert os.listdir(path.parent) == ["a.txt"]


def test_remote_paths_go_through_gfile():
    path = "ram://files_test/dir/a.txt"
    files.write_atomic(path, "remote")
    with tf.io.gfile.GFile(path) as f:
        assert f.read() == "remote"
    assert tf.io.gfile.glob(path + ".tmp-*") == []


def test_json_values_are_written_atomically_and_read_back(tmp_path):
    path = str(tmp_path / "sub" / "value.json")
    files.write_json_atomic(path, {"a": 1})
    files.write_json_atomic(path, {"a": 2})
    assert files.read_json(path) == {"a": 2}
    assert os.listdir(tmp_path / "sub") == ["value.json"]
    assert files.read_json(str(tmp_path / "missing.json")) is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(files.JsonFileError, match="bad.json: not valid JSON"):
        files.read_json(str(tmp_path / "bad.json"))


def test_jsonl_log_appends_and_drops_a_torn_last_line(tmp_path):
    from nasfpn_tf.files import JsonlLog

    path = str(tmp_path / "log.jsonl")
    log = JsonlLog.open(path)
    assert log.rows == []
    log.append({"a": 1})
    log.append({"a": 2})
    with open(path, "a") as f:
        f.write('{"a": 3, "b"')  # a kill mid-append
    reopened = JsonlLog.open(path)
    assert reopened.rows == [{"a": 1}, {"a": 2}]
    reopened.append({"a": 4})
    assert JsonlLog.open(path).rows == [{"a": 1}, {"a": 2}, {"a": 4}]


def test_jsonl_log_keeps_a_complete_last_line_and_names_bad_lines(tmp_path):
    from nasfpn_tf.files import JsonlLog

    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}')  # complete, only the newline lost
    assert JsonlLog.open(str(path)).rows == [{"a": 1}, {"a": 2}]
    assert path.read_text().endswith("\n")
    path.write_text('{"a": 1}\n[1, 2]\n{"a": 3}\n')
    with pytest.raises(ValueError, match="log.jsonl:2: not a JSON object"):
        JsonlLog.open(str(path))
    # A complete last line is no torn write, even one that is not a row
    # (a newer release's): named, and the file is left as it is.
    path.write_text('{"a": 1}\n[1, 2]')
    with pytest.raises(ValueError, match="log.jsonl:2: not a JSON object"):
        JsonlLog.open(str(path))
    assert path.read_text() == '{"a": 1}\n[1, 2]'


def test_run_file_names_are_defined_once():
    # Every module that writes into a run directory takes the name from
    # nasfpn_tf.run_files; no other module defines a name of its own.
    root = pathlib.Path(nasfpn_tf.__file__).parent
    pattern = re.compile(
        r'^[A-Z_]*(FILE|FILENAME|SUBDIR|_DIR)\s*=\s*"', re.MULTILINE
    )
    # dataset.py names the files of a converted data folder and main.py
    # the folder runs go to by default: neither is inside a run.
    allowed = {"run_files.py", "dataset.py", "main.py"}
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name not in allowed and pattern.search(path.read_text())
    ]
    assert offenders == []
