#!/usr/bin/env python
"""Gate training, kept at this path for the jobs that call it: now ``bpr-train-gate`` (bpr/cli/train_gate.py)."""

import sys

from bpr.cli.train_gate import main

if __name__ == "__main__":
    sys.exit(main())
