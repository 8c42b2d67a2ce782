"""``python -m tether``: the same command line as ``tether``."""

import sys

from tether.cli import main

sys.exit(main())
