"""``python -m reports.static``: the static performance report (see :mod:`reports.static`)."""

import sys

from .forward_report import main

if __name__ == "__main__":
    sys.exit(main())
