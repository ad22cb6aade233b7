"""Tests for nasfpn_tf.arch.draw."""

import re
import subprocess
import sys

import numpy as np
import pytest

from nasfpn_tf.arch import draw, known
from nasfpn_tf.arch.spec import CellSpec, NeckSpec

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _with_dead_cells():
    """The published spec plus two dead cells after the outputs."""
    cells = known.NASFPN_SPEC.cells + (
        CellSpec((0, 11), 5, "global_attention"),
        CellSpec((12, 4), 6, "sum"),
    )
    return NeckSpec(cells)


def _edges(dot):
    return re.findall(r"^\s*n(\d+) -> n(\d+) \[([^\]]*)\];$", dot, re.MULTILINE)


def _node_attrs(dot):
    return dict(re.findall(r"^\s*n(\d+) \[(.*)\];$", dot, re.MULTILINE))


def test_dot_declares_every_node_once():
    spec = known.NASFPN_SPEC
    dot = draw.to_dot(spec)
    assert dot.startswith("digraph nasfpn {")
    assert dot.rstrip().endswith("}")
    assert dot.count("{") == dot.count("}")
    attrs = _node_attrs(dot)
    assert sorted(map(int, attrs)) == list(range(spec.num_nodes))
    for node, level in enumerate(spec.levels):
        assert f'label="P{level}\\nin"' in attrs[str(node)]


def test_dot_edges_and_dashed_summed_in_nodes():
    spec = known.NASFPN_SPEC
    edges = _edges(draw.to_dot(spec))
    solid = {(int(a), int(b)) for a, b, at in edges if "dashed" not in at}
    dashed = {(int(a), int(b)) for a, b, at in edges if "dashed" in at}
    expected = {
        (j, spec.num_inputs + i)
        for i, c in enumerate(spec.cells)
        for j in c.inputs
    }
    assert solid == expected
    assert len(edges) == len(solid) + len(dashed)  # no duplicates
    # P5 into the P5 output cell (node 9), P7 into the P7 one (node 10).
    assert dashed == {(2, 9), (4, 10)}
    # Data edges leave the rows to the levels.
    assert all("constraint=false" in at for _, _, at in edges)


def test_dot_rows_by_level_coarse_on_top():
    spec = known.NASFPN_SPEC
    dot = draw.to_dot(spec)
    assert "L7 -> L6 -> L5 -> L4 -> L3 [style=invis];" in dot
    rows = dict(re.findall(r"\{ rank=same; L(\d); ([^}]*); \}", dot))
    levels = spec.node_levels()
    for level in spec.levels:
        members = [int(n[1:]) for n in rows[str(level)].split("; ")]
        assert members == [n for n, lv in enumerate(levels) if lv == level]
    # Rows are listed coarse to fine.
    assert list(rows) == ["7", "6", "5", "4", "3"]


def test_dot_op_labels_outputs_and_title():
    spec = known.NASFPN_SPEC
    attrs = _node_attrs(draw.to_dot(spec, title='my "best" spec'))
    for i, cell in enumerate(spec.cells):
        a = attrs[str(spec.num_inputs + i)]
        symbol = "GP" if cell.op == "global_attention" else "+"
        assert a.startswith(f'label="{symbol}\\n{spec.num_inputs + i}"')
        assert ("peripheries=2" in a) == cell.is_output
        if cell.is_output:
            assert f'xlabel="P{cell.level} out"' in a
    assert 'label="my \\"best\\" spec";' in draw.to_dot(spec, 'my "best" spec')
    assert spec.canonical_key() in draw.to_dot(spec)


def test_dot_greys_dead_cells():
    spec = _with_dead_cells()
    dot = draw.to_dot(spec)
    attrs = _node_attrs(dot)
    assert "filled,dashed" in attrs["12"]
    assert "filled,dashed" in attrs["13"]
    assert not any("filled,dashed" in attrs[str(n)] for n in range(12))
    grey = {(a, b) for a, b, at in _edges(dot) if draw.DEAD_TEXT_COLOR in at}
    assert grey == {("0", "12"), ("11", "12"), ("12", "13"), ("4", "13")}


def _read_png(path):
    from matplotlib import image

    assert path.read_bytes()[:8] == PNG_MAGIC
    return image.imread(str(path))[..., :3]


def _has_color(pixels, hex_color, tolerance=0.01):
    rgb = np.array([int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int((np.abs(pixels - rgb).max(axis=-1) < tolerance).sum())


def test_png_draws_ops_outputs_and_dead_cells(tmp_path):
    path = tmp_path / "published.png"
    draw.to_png(known.NASFPN_SPEC, str(path), title="published")
    pixels = _read_png(path)
    height, width = pixels.shape[:2]
    assert width > height > 400
    assert _has_color(pixels, draw.OP_COLORS["sum"]) > 500
    assert _has_color(pixels, draw.OP_COLORS["global_attention"]) > 500
    assert _has_color(pixels, draw.OUTPUT_COLOR) > 500
    # The legend shows a dead-cell marker, but no cell is dead.
    legend_only = _has_color(pixels, draw.DEAD_COLOR)

    dead = tmp_path / "dead.png"
    draw.to_png(_with_dead_cells(), str(dead))
    dead_pixels = _read_png(dead)
    assert dead_pixels.shape[1] > width  # two more columns
    assert _has_color(dead_pixels, draw.DEAD_COLOR) > legend_only + 500


def test_cli_draws_published_and_files(tmp_path, capsys):
    png = tmp_path / "pub.png"
    assert draw.main(["--published", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_MAGIC
    spec_file = tmp_path / "spec.json"
    spec = known.NASFPN_SPEC
    spec_file.write_text(spec.to_json())
    dot = tmp_path / "spec.dot"
    assert draw.main([str(spec_file), str(dot), "--title", "T"]) == 0
    assert dot.read_text() == draw.to_dot(spec, "T")
    assert str(dot) in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["out.png"],  # neither a spec nor --published
        ["spec.json", "out.png", "--published"],  # both
        ["--published", "out.svg"],  # unknown format
    ],
)
def test_cli_usage_errors(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        draw.main(argv)
    assert err.value.code == 2


def test_cli_runs_as_a_module(tmp_path):
    out = tmp_path / "pub.dot"
    result = subprocess.run(
        [sys.executable, "-m", "nasfpn_tf.arch.draw", "--published", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert out.read_text() == draw.to_dot(
        known.NASFPN_SPEC, "NAS-FPN (Ghiasi et al. 2019, Fig. 7f)"
    )
