"""Published architectures.

``NASFPN_SPEC`` is the feature pyramid found by the search in Ghiasi et al.,
"NAS-FPN: Learning Scalable Feature Pyramid Architecture for Object
Detection", CVPR 2019 (arXiv:1904.07392), Figure 7(f), in the exact form of
Model Garden's ``official/vision/modeling/decoders/nasfpn.py``.
"""

from nasfpn_tf.arch.spec import NeckSpec

# (level, combine_fn, (input0, input1), is_output), as Model Garden spells it.
# Nodes 0..4 are P3..P7; each block appends one node.
NASFPN_BLOCK_SPECS = (
    (4, "attention", (1, 3), False),
    (4, "sum", (1, 5), False),
    (3, "sum", (0, 6), True),
    (4, "sum", (6, 7), True),
    (5, "attention", (7, 8), True),
    (7, "attention", (6, 9), True),
    (6, "attention", (9, 10), True),
)

NASFPN_SPEC = NeckSpec.from_block_specs(NASFPN_BLOCK_SPECS)

KNOWN_SPECS = {"nasfpn": NASFPN_SPEC}


def get(name: str) -> NeckSpec:
    """Returns a published spec by name (``"nasfpn"``)."""
    try:
        return KNOWN_SPECS[name]
    except KeyError:
        raise KeyError(
            f"unknown architecture {name!r}; known: {sorted(KNOWN_SPECS)}"
        ) from None
