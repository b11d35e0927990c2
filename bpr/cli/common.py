"""What every bpr command shares: one-line errors and a non-zero exit instead of tracebacks."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from bpr import __version__
from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.options import DEFAULT_OPTIONS, option_infos, option_types
from bpr.signals import install_handlers, restore_handlers


def command_parser(prog: str, description: str, **kwargs: Any) -> argparse.ArgumentParser:
    """The argument parser every bpr command starts from: its name, and ``--version``."""
    p = argparse.ArgumentParser(prog=prog, description=description, **kwargs)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


THREADS_ENV = "BPR_TORCH_THREADS"


def add_option_flags(parser: argparse.ArgumentParser, recommend: bool = False) -> None:
    """One flag per :class:`bpr.options.RefineOptions` field, from its declaration: ``--nms-iou``
    for a number, ``--flip-tta`` / ``--no-flip-tta`` for a switch; None (not given) keeps the
    checkpoint's recommendation or the library's default.

    ``recommend``: only the options a checkpoint may recommend, as ``bpr-package`` sets them.
    """
    types = option_types()
    for name, info in option_infos().items():
        if recommend and not info.recommended:
            continue
        flag = "--" + name.replace("_", "-")
        default = getattr(DEFAULT_OPTIONS, name)
        shown = ("on" if default else "off") if types[name] is bool else f"{default:g}"
        if recommend:
            help_text = f"recommend: {info.help}"
        elif info.recommended:
            help_text = f"{info.help} (default: as the checkpoint recommends, else {shown})"
        else:
            help_text = f"{info.help} (default: {shown})"
        if types[name] is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            if info.negative_flag and not recommend:
                parser.add_argument(
                    info.negative_flag,
                    dest=name,
                    action="store_false",
                    default=None,
                    help=f"the same as --no-{flag[2:]}",
                )
        else:
            parser.add_argument(flag, type=types[name], default=None, help=help_text)


def rules_summary(counts: Mapping[str, int], thin: bool) -> str:
    """What the do-no-harm rules did, for a summary line (``bpr-refine`` with either engine):
    ``counts`` holds :class:`bpr.options.RefineStats`' counters by name; ``thin`` adds the
    ``keep_thin`` count; instances given their ungated answer (``ungated_shift``) are counted when any were."""
    text = (
        f"{counts['fallbacks']} instances kept as given by the fallback rule, {counts['small']} under the minimum "
        f"area, {counts['gated']} patches kept coarse by the quality gate ({counts['early_gated']} of them without "
        "a second opinion: the mirrored or companion forward)"
    )
    if counts.get("ungated"):
        text += f", {counts['ungated']} instances given the refiner's ungated answer (moved beyond the ungated shift)"
    return text + (f", {counts['thin_kept']} instances given back thin parts" if thin else "")


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


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread like KeyboardInterrupt is for SIGINT.

    A BaseException so that no ``except Exception`` swallows it, and so that every ``finally``
    (the temporary file of an atomic write among them) runs on the way out: the default action
    of these signals ends the process at once and leaves the temporary file behind."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_terminated(signum: int, _frame: Any) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGTERM and SIGHUP raise :class:`Terminated` while the command runs; the previous
    handlers come back afterwards (see :mod:`bpr.signals` for the ones left alone)."""
    previous = install_handlers(("SIGTERM", "SIGHUP"), _raise_terminated)
    try:
        yield
    finally:
        restore_handlers(previous)


def run_cli(prog: str, unwind_signals: bool = True) -> Callable[[Callable[..., int | None]], Callable[..., int]]:
    """Decorate a ``main(argv)``: user errors print ``prog: error: ...`` on stderr and exit 2;
    SIGINT, SIGTERM and SIGHUP clean up (temporary files) and exit 128 + the signal.
    ``unwind_signals=False`` leaves SIGTERM/SIGHUP alone (bpr-serve: uvicorn owns them)."""

    def wrap(main: Callable[..., int | None]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(argv: list[str] | None = None) -> int:
            try:
                with _signals_unwind() if unwind_signals else contextlib.nullcontext():
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
            except Terminated as exc:
                print(f"{prog}: terminated ({exc})", file=sys.stderr)
                return 128 + exc.signum
            return int(code or 0)

        return wrapper

    return wrap
