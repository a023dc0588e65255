"""``python -m stochclosure``: the command line (same as the ``stochclosure`` script)."""

import sys

from .cli import main

sys.exit(main())
