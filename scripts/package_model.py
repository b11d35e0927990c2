#!/usr/bin/env python
"""Packaging, kept at this path for the jobs that call it: now ``bpr-package`` (bpr/cli/package.py)."""

import sys

from bpr.cli.package import main

if __name__ == "__main__":
    sys.exit(main())
