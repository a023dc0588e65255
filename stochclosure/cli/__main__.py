"""``python -m stochclosure.cli``: the command line (same as the ``stochclosure`` script)."""

import sys

from . import main

sys.exit(main())
