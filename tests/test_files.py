"""Tests for nasfpn_tf.files: atomic writes, local and remote."""

import os

import pytest
import tensorflow as tf

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
