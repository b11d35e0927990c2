"""Installing signal handlers the way every bpr command does.

Two places take signals: the CLI (SIGTERM / SIGHUP unwind through every ``finally``, so atomic
writes leave no temporary files) and the training loop (a signal asks for a clean stop after the
current step). Both must leave a signal the launcher ignores ignored: ``nohup`` ignores SIGHUP so
that a closed terminal does not end the run, and a shell starts background jobs with SIGINT
ignored. Python allows handlers only in the main thread; elsewhere nothing is installed.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

Handler = Callable[[int, Any], Any] | signal.Handlers


def install_handlers(names: tuple[str, ...], handler: Handler) -> dict[int, Any]:
    """Install ``handler`` for each named signal this platform has and the launcher does not
    ignore; return the previous handlers, for :func:`restore_handlers`."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous: dict[int, Any] = {}
    for name in names:
        sig = getattr(signal, name, None)
        if sig is not None and signal.getsignal(sig) is not signal.SIG_IGN:
            previous[sig] = signal.signal(sig, handler)
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_handlers` replaced."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def worker_defaults() -> None:
    """For a forked worker process (a ``multiprocessing.Pool`` initializer): SIGTERM and SIGHUP
    take their default action again and SIGINT is ignored.

    A fork inherits the CLI's handlers, and ``Pool`` ends its workers with SIGTERM when it
    closes: with the parent's handler each worker would raise and print a traceback on every
    normal exit. A Ctrl-C reaches the whole process group; the parent alone handles it and
    ends its pool. Signals the launcher ignored stay ignored."""
    install_handlers(("SIGTERM", "SIGHUP"), signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
