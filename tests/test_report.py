"""Tests of `report.py`: what a search prints and writes about itself."""

import ast

from nasfpn_tf.arch import known
from nasfpn_tf.search import report


def test_block_specs_text_is_model_gardens_list():
    text = report.block_specs_text(known.NASFPN_SPEC)
    assert text.startswith("NASFPN_BLOCK_SPECS = [")
    value = ast.literal_eval(text.split("=", 1)[1].strip())
    assert [tuple(v) for v in value] == list(known.NASFPN_BLOCK_SPECS)
