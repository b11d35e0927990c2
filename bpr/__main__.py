"""``python -m bpr ...`` is ``bpr-refine ...``."""

import sys

from bpr.cli.refine import main

sys.exit(main())
