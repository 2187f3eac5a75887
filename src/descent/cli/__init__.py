"""The ``descent`` command: a thin argparse layer over the library."""
