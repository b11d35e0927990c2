"""What every bpr command shares: one-line errors and a non-zero exit instead of tracebacks."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

from bpr.errors import BprInputError, ModelNotAvailableError


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
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130
            return int(code or 0)

        return wrapper

    return wrap
