"""``python -m descent``: the ``descent`` command line (same as the ``descent`` script).

Example:
    $ python -m descent --help
"""

from __future__ import annotations

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
