"""``python -m nasfpn_tf.data.convert``: see ``nasfpn_tf.data.convert``."""

import sys

from absl import logging

from nasfpn_tf.data.convert.cli import main

if __name__ == "__main__":
    logging.set_verbosity(logging.INFO)
    main(sys.argv[1:])
