"""Drawings of a NAS-FPN spec: Graphviz DOT text and a matplotlib PNG.

Both place nodes by pyramid level with the finer levels at the bottom, as
Figure 7 of Ghiasi et al., "NAS-FPN: Learning Scalable Feature Pyramid
Architecture for Object Detection", CVPR 2019 (arXiv:1904.07392), and label
merges as the paper does: ``+`` for sum, ``GP`` for global pooling
(``global_attention``). Nodes summed into an output cell besides its two
inputs (``NeckSpec.extra_inputs``) come in on dashed edges.

Command line::

  python -m nasfpn_tf.arch.draw spec.json out.png [--title TEXT]
  python -m nasfpn_tf.arch.draw --published out.png
  python -m nasfpn_tf.arch.draw spec.json out.dot   # DOT text instead
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence

from nasfpn_tf.arch.spec import CellSpec, NeckSpec

OP_SYMBOLS = {"sum": "+", "global_attention": "GP"}
OP_COLORS = {"sum": "#9ecae1", "global_attention": "#fdae6b"}
OP_NAMES = {"sum": "sum (+)", "global_attention": "global pooling (GP)"}
INPUT_COLOR = "#d9d9d9"
DEAD_COLOR = "#e6e6e6"
DEAD_TEXT_COLOR = "#a0a0a0"
OUTPUT_COLOR = "#cb181d"
EDGE_COLOR = "#525252"

# PNG geometry, in inches and points.
_INCHES_PER_COLUMN = 0.75
_INCHES_PER_LEVEL = 0.9
_MARGIN_INCHES = 1.6
_NODE_RADIUS_PT = 13.0
_NODE_AREA = (2 * _NODE_RADIUS_PT) ** 2  # scatter sizes are areas in pt^2
_OUTPUT_RING_PT = 3.0
# Curvatures tried for an edge (matplotlib "arc3" rad), straightest first.
_EDGE_CURVES = (0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5)
_EDGE_SAMPLES = 24
# Room above the coarsest and below the finest level, in levels.
_LEVEL_PAD = 0.6
# An edge this far (inches) from every other node is clear of it.
_EDGE_CLEARANCE_IN = 0.3
_DPI = 150


def _dot_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(spec: NeckSpec, title: str | None = None) -> str:
    """Graphviz DOT text of ``spec``.

    One row per level (``rank=same``), coarsest on top, kept in order by an
    invisible chain of level labels; cells run left to right in build
    order. Output cells have a double red border, dead cells are grey and
    dashed, extra summed-in nodes come in on dashed edges.

    Args:
      spec: the spec to draw.
      title: a caption; defaults to the spec's canonical key.

    Returns:
      The DOT source (render with ``dot -Tpng``).
    """
    title = title if title is not None else f"NAS-FPN {spec.canonical_key()}"
    levels = spec.node_levels()
    live = spec.live_cells()
    extras = spec.extra_inputs()
    lines = [
        "digraph nasfpn {",
        "  rankdir=TB;",
        "  newrank=true;",
        f"  label={_dot_quote(title)};",
        "  labelloc=t;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [color="#525252", arrowsize=0.6];',
    ]
    lines.append("  // Level labels, coarse to fine, pin the rows' order.")
    for level in reversed(spec.levels):
        lines.append(f'  L{level} [label="P{level}", shape=plaintext];')
    chain = " -> ".join(f"L{lv}" for lv in reversed(spec.levels))
    lines.append(f"  {chain} [style=invis];")
    lines.append("  // Input nodes.")
    for node in range(spec.num_inputs):
        lines.append(
            f'  n{node} [label="P{levels[node]}\\nin", shape=box, '
            f'style=filled, fillcolor="{INPUT_COLOR}"];'
        )
    lines.append("  // Cells, in build order.")
    for i, cell in enumerate(spec.cells):
        lines.append(_dot_cell(spec.num_inputs + i, cell, live[i]))
    lines.append("  // One row per level; invisible edges keep build order.")
    lines += _dot_rows(spec.levels, levels)
    lines.append("  // Data flow; constraint=false leaves rows to the levels.")
    for i, cell in enumerate(spec.cells):
        node = spec.num_inputs + i
        grey = "" if live[i] else f', color="{DEAD_TEXT_COLOR}"'
        for src in cell.inputs:
            lines.append(f"  n{src} -> n{node} [constraint=false{grey}];")
        for src in extras[i]:
            lines.append(
                f"  n{src} -> n{node} [constraint=false, style=dashed{grey}];"
            )
    lines.append("}")
    return "\n".join(lines) + "\n"


def _dot_cell(node: int, cell: CellSpec, live: bool) -> str:
    """The DOT line of cell node ``node``: op colour, grey when dead, a
    double red border when an output."""
    attrs = [
        f'label="{OP_SYMBOLS[cell.op]}\\n{node}"',
        "shape=circle",
        "fixedsize=true",
        "width=0.55",
    ]
    if live:
        attrs += ["style=filled", f'fillcolor="{OP_COLORS[cell.op]}"']
    else:
        attrs += [
            'style="filled,dashed"',
            f'fillcolor="{DEAD_COLOR}"',
            f'fontcolor="{DEAD_TEXT_COLOR}"',
            f'color="{DEAD_TEXT_COLOR}"',
        ]
    if cell.is_output:
        attrs += [
            "peripheries=2",
            f'color="{OUTPUT_COLOR}"',
            "penwidth=2",
            f'xlabel="P{cell.level} out"',
        ]
    return f"  n{node} [{', '.join(attrs)}];"


def _dot_rows(
    spec_levels: Sequence[int], node_levels: Sequence[int]
) -> list[str]:
    """One ``rank=same`` row per level, coarsest first, its label then its
    nodes in build order (kept by invisible edges)."""
    lines = []
    for level in reversed(spec_levels):
        members = [f"L{level}"] + [
            f"n{node}" for node, lv in enumerate(node_levels) if lv == level
        ]
        lines.append(f"  {{ rank=same; {'; '.join(members)}; }}")
        if len(members) > 1:
            row = " -> ".join(members)
            lines.append(f"  {row} [style=invis];")
    return lines


def _edge_curvature(
    points: Sequence[tuple[float, float]],
    src: int,
    dst: int,
    level_range: tuple[float, float],
) -> float:
    """The straightest arc from ``src`` to ``dst`` that misses other nodes.

    Args:
      points: (column, level) of every node.
      src: the edge's first node.
      dst: the edge's last node.
      level_range: the plot's lowest and highest y; arcs stay inside.

    Returns:
      The "arc3" curvature whose curve passes farthest from the other nodes
      and the plot's top and bottom, preferring straighter ones once clear.
    """
    scale = (_INCHES_PER_COLUMN, _INCHES_PER_LEVEL)
    low, high = (lv * _INCHES_PER_LEVEL for lv in level_range)
    (x0, y0), (x1, y1) = (
        (p[0] * scale[0], p[1] * scale[1]) for p in (points[src], points[dst])
    )
    others = [
        (p[0] * scale[0], p[1] * scale[1])
        for n, p in enumerate(points)
        if n not in (src, dst)
    ]
    best, best_gap = 0.0, -1.0
    for rad in _EDGE_CURVES:
        # matplotlib's arc3: a quadratic Bezier whose control point sits
        # rad * length off the chord's midpoint, to the chord's right.
        cx = (x0 + x1) / 2 + rad * (y1 - y0)
        cy = (y0 + y1) / 2 - rad * (x1 - x0)
        gap = float("inf")
        for k in range(1, _EDGE_SAMPLES):
            t = k / _EDGE_SAMPLES
            bx = (1 - t) ** 2 * x0 + 2 * t * (1 - t) * cx + t**2 * x1
            by = (1 - t) ** 2 * y0 + 2 * t * (1 - t) * cy + t**2 * y1
            gap = min(gap, by - low, high - by)
            for ox, oy in others:
                gap = min(gap, ((bx - ox) ** 2 + (by - oy) ** 2) ** 0.5)
        if gap >= _EDGE_CLEARANCE_IN:
            return rad
        if gap > best_gap:
            best, best_gap = rad, gap
    return best


def to_png(spec: NeckSpec, path: str, title: str | None = None) -> None:
    """Renders ``spec`` to a PNG file with matplotlib (no Graphviz needed).

    x is the build order (inputs in the first column), y the level with the
    finer levels at the bottom. Cells are circles coloured by op and
    labelled ``+``/``GP`` with their node index; output cells wear a red
    ring and their level; dead cells are grey.

    Args:
      spec: the spec to draw.
      path: the PNG file to write (local path).
      title: a caption; defaults to the spec's canonical key.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    title = title if title is not None else f"NAS-FPN {spec.canonical_key()}"
    layout = _Layout.of(spec)
    width = _MARGIN_INCHES + _INCHES_PER_COLUMN * layout.columns
    height = _MARGIN_INCHES + _INCHES_PER_LEVEL * spec.num_inputs
    fig, ax = plt.subplots(figsize=(max(width, 5.5), height), dpi=_DPI)
    try:
        _draw_grid(ax, spec)
        _draw_edges(ax, spec, layout)
        _draw_inputs(ax, spec, layout)
        _draw_cells(ax, spec, layout)
        _label_axes(ax, spec, layout, title)
        _draw_legend(ax)
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where every node of a spec sits: x the column, y the level."""

    x: tuple[int, ...]
    levels: tuple[int, ...]
    columns: int
    level_range: tuple[float, float]

    @classmethod
    def of(cls, spec: NeckSpec) -> _Layout:
        columns = 1 + len(spec.cells)
        return cls(
            x=tuple([0] * spec.num_inputs + list(range(1, columns))),
            levels=tuple(spec.node_levels()),
            columns=columns,
            level_range=(
                spec.min_level - _LEVEL_PAD,
                spec.max_level + _LEVEL_PAD,
            ),
        )

    @property
    def points(self) -> list[tuple[int, int]]:
        return list(zip(self.x, self.levels))


def _draw_grid(ax, spec: NeckSpec) -> None:
    for level in spec.levels:
        ax.axhline(level, color="#eeeeee", lw=0.8, zorder=0)
    ax.axvline(0.5, color="#cccccc", lw=0.8, ls=":", zorder=0)


def _draw_edges(ax, spec: NeckSpec, layout: _Layout) -> None:
    """Arrows into every cell: its two inputs solid, the extra inputs a
    cell sums in (unused outputs of its level) dashed, a dead cell's grey."""
    live = spec.live_cells()
    extras = spec.extra_inputs()
    points = layout.points
    x, levels = layout.x, layout.levels

    def edge(src: int, dst: int, dashed: bool, dim: bool) -> None:
        rad = _edge_curvature(points, src, dst, layout.level_range)
        ax.annotate(
            "",
            xy=(x[dst], levels[dst]),
            xytext=(x[src], levels[src]),
            arrowprops={
                "arrowstyle": "-|>",
                "mutation_scale": 9,
                "color": DEAD_TEXT_COLOR if dim else EDGE_COLOR,
                "lw": 0.9,
                "ls": "--" if dashed else "-",
                "shrinkA": _NODE_RADIUS_PT,
                "shrinkB": _NODE_RADIUS_PT + 1,
                "connectionstyle": f"arc3,rad={rad}",
            },
            zorder=1,
        )

    for i, cell in enumerate(spec.cells):
        node = spec.num_inputs + i
        for src in cell.inputs:
            edge(src, node, dashed=False, dim=not live[i])
        for src in extras[i]:
            edge(src, node, dashed=True, dim=not live[i])


def _draw_inputs(ax, spec: NeckSpec, layout: _Layout) -> None:
    """The input pyramid: squares labelled P{level} in the first column."""
    ax.scatter(
        layout.x[: spec.num_inputs],
        spec.levels,
        s=_NODE_AREA,
        marker="s",
        c=INPUT_COLOR,
        edgecolors=EDGE_COLOR,
        linewidths=0.8,
        zorder=2,
    )
    for node in range(spec.num_inputs):
        level = layout.levels[node]
        ax.text(
            0, level, f"P{level}", ha="center", va="center", fontsize=8,
            zorder=3,
        )  # fmt: skip


def _draw_cells(ax, spec: NeckSpec, layout: _Layout) -> None:
    """Each cell: a circle coloured by op, its symbol, its node index
    below, and for an output cell a red ring and "P{level} out" above."""
    live = spec.live_cells()
    for i, cell in enumerate(spec.cells):
        node = spec.num_inputs + i
        at = (layout.x[node], cell.level)
        face = OP_COLORS[cell.op] if live[i] else DEAD_COLOR
        ring = OUTPUT_COLOR if cell.is_output else EDGE_COLOR
        ax.scatter(
            [at[0]],
            [at[1]],
            s=_NODE_AREA,
            c=face,
            edgecolors=ring if live[i] else DEAD_TEXT_COLOR,
            linewidths=_OUTPUT_RING_PT if cell.is_output else 0.8,
            linestyle="-" if live[i] else "--",
            zorder=2,
        )
        ax.text(
            *at,
            OP_SYMBOLS[cell.op],
            ha="center",
            va="center",
            fontsize=8,
            fontweight="bold",
            color="black" if live[i] else DEAD_TEXT_COLOR,
            zorder=3,
        )
        ax.annotate(
            str(node),
            at,
            xytext=(0, -_NODE_RADIUS_PT - 2 * _OUTPUT_RING_PT),
            textcoords="offset points",
            ha="center",
            va="top",
            fontsize=6,
            color=DEAD_TEXT_COLOR,
        )
        if cell.is_output:
            ax.annotate(
                f"P{cell.level} out",
                at,
                xytext=(0, _NODE_RADIUS_PT + 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                color=OUTPUT_COLOR,
                fontweight="bold",
            )


def _label_axes(ax, spec: NeckSpec, layout: _Layout, title: str) -> None:
    columns = layout.columns
    ax.set_xlim(-0.6, columns - 0.4)
    ax.set_ylim(*layout.level_range)
    ax.set_yticks(spec.levels, [f"P{lv}" for lv in spec.levels])
    ax.set_xticks(
        range(columns), ["inputs"] + [str(i) for i in range(columns - 1)]
    )
    ax.set_xlabel("cell, in build order (small numbers: node index)")
    ax.set_ylabel("level")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)


def _draw_legend(ax) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [], [], marker="o", ls="", ms=9, mfc=OP_COLORS[op],
            mec=EDGE_COLOR, label=OP_NAMES[op],
        )
        for op in OP_COLORS
    ]  # fmt: skip
    handles += [
        Line2D(
            [], [], marker="o", ls="", ms=9, mfc="white",
            mec=OUTPUT_COLOR, mew=2, label="output cell",
        ),
        Line2D(
            [], [], marker="o", ls="", ms=9, mfc=DEAD_COLOR,
            mec=DEAD_TEXT_COLOR, label="dead cell",
        ),
        Line2D([], [], color=EDGE_COLOR, ls="--", label="summed in"),
    ]  # fmt: skip
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.14),
        ncol=len(handles),
        fontsize=7,
        frameon=False,
        handletextpad=0.3,
        columnspacing=1.0,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry: draws a spec file or the published spec."""
    parser = argparse.ArgumentParser(
        prog="python -m nasfpn_tf.arch.draw",
        description="Draw a NAS-FPN spec as PNG (matplotlib) or DOT text.",
    )
    parser.add_argument("spec", nargs="?", help="spec JSON file")
    parser.add_argument("out", help="output file: .png, or .dot for DOT text")
    parser.add_argument(
        "--published",
        action="store_true",
        help="draw the published NAS-FPN spec instead of a file",
    )
    parser.add_argument("--title", default=None, help="caption")
    args = parser.parse_args(argv)
    if args.published == (args.spec is not None):
        parser.error("give either a spec file or --published")
    if args.published:
        from nasfpn_tf.arch import known

        spec = known.NASFPN_SPEC
        title = args.title or "NAS-FPN (Ghiasi et al. 2019, Fig. 7f)"
    else:
        spec = NeckSpec.load(args.spec)
        title = args.title
    if args.out.endswith(".dot"):
        with open(args.out, "w") as f:
            f.write(to_dot(spec, title))
    elif args.out.endswith(".png"):
        to_png(spec, args.out, title)
    else:
        parser.error(f"out: expected a .png or .dot path, got {args.out!r}")
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
