"""What every bpr command shares: one-line errors and a non-zero exit instead of tracebacks."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from bpr import __version__
from bpr.errors import BprInputError, ModelNotAvailableError


def command_parser(prog: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The argument parser every bpr command starts from: its name, and ``--version``."""
    p = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


THREADS_ENV = "BPR_TORCH_THREADS"


def torch_threads(flag: int | None) -> int | None:
    """The network's CPU threads: ``--threads``, else ``BPR_TORCH_THREADS`` (the service's
    setting, so one environment serves both), else None (torch's default, one per core)."""
    value: int | str | None = flag
    source = "--threads"
    if value is None and os.environ.get(THREADS_ENV, "").strip():
        value, source = os.environ[THREADS_ENV].strip(), THREADS_ENV
    if value is None:
        return None
    try:
        threads = int(value)
    except ValueError:
        raise BprInputError(f"{source} must be a whole number of threads, got {value!r}") from None
    if threads < 1:
        raise BprInputError(f"{source} must be at least 1, got {threads}")
    return threads


def run_cli(prog: str) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a ``main(argv)``: user errors print ``prog: error: ...`` on stderr and exit 2."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                code = main(argv)
            except (BprInputError, ModelNotAvailableError) as exc:
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return 2
            except OSError as exc:  # a disk that fills up or a folder that vanishes mid-run
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
                return 2
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            return int(code or 0)

        return wrapper

    return wrap
