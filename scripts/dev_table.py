#!/usr/bin/env python
"""The dev table, kept at this path for the jobs that call it: now ``bpr-dev-table`` (bpr/cli/dev_table.py)."""

import sys

from bpr.cli.dev_table import main

if __name__ == "__main__":
    sys.exit(main())
