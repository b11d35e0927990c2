"""How to refine, declared once: :class:`RefineOptions` and the running :class:`RefineStats`.

Each option is one dataclass field whose metadata (:class:`OptionInfo`) carries its help
text, its bounds, whether the checkpoint recommends its value and whether one HTTP request
may override it. Every door derives its own view from these fields instead of repeating
them: ``bpr-refine``'s flags (:func:`bpr.cli.common.add_option_flags`), the service's
``BPR_*`` settings, its per-request query and ``/v1/models`` (``service/options.py``).
Adding an option is one field here plus its logic.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, get_type_hints

from bpr.errors import BprInputError


@dataclass(frozen=True)
class OptionInfo:
    """What every door needs to know about one option besides its name, type and default."""

    help: str
    label: str  # how an error message names it
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    recommended: bool = False  # the checkpoint may recommend a value (its default then)
    per_request: bool = False  # one service request may override it (query parameter)
    request_le: float | None = None  # a tighter upper bound for one request
    negative_flag: str | None = None  # an extra CLI flag that turns a boolean option off

    def bounds(self) -> dict[str, Any]:
        """The bounds as pydantic ``Field`` keywords."""
        return {k: v for k, v in (("ge", self.ge), ("gt", self.gt), ("le", self.le), ("lt", self.lt)) if v is not None}

    def check(self, value: Any) -> None:
        """A one-line BprInputError when ``value`` is out of bounds."""
        low_ok = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        high_ok = (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
        if not (low_ok and high_ok):
            raise BprInputError(f"{self.label} must be {self.describe_bounds()}, got {value}")

    def describe_bounds(self) -> str:
        low = f"[{self.ge:g}" if self.ge is not None else f"({self.gt:g}" if self.gt is not None else None
        high = f"{self.le:g}]" if self.le is not None else f"{self.lt:g})" if self.lt is not None else None
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"at least {self.ge:g}" if self.ge is not None else f"above {self.gt:g}"
        return f"at most {self.le:g}" if self.le is not None else f"below {self.lt:g}"


def option(default: Any, help: str, label: str, **info: Any) -> Any:
    """A RefineOptions field: its default and its :class:`OptionInfo`."""
    return field(default=default, metadata={"option": OptionInfo(help=help, label=label, **info)})


@dataclass(frozen=True)
class RefineOptions:
    """How to refine, per call; ``Refiner.options`` holds the defaults of every call."""

    nms_iou: float = option(
        0.25,
        "patch NMS IoU: 0.25 sparse, 0.55 dense (more patches, slower)",
        "NMS IoU threshold",
        gt=0.0,
        le=1.0,
        per_request=True,
    )
    cover_all: bool = option(
        True,
        "add patches until every boundary pixel lies in one (see bpr/patches.py)",
        "cover_all",
    )
    resolve_overlaps: bool = option(
        True,
        "pixels newly gained by an instance while another claims them go to the more confident one",
        "resolve_overlaps",
        negative_flag="--keep-overlaps",
    )
    flip_tta: bool = option(
        False,
        "also run every patch mirrored and average the two (2x network time)",
        "flip_tta",
        recommended=True,
        per_request=True,
    )
    iterations: int = option(
        1,
        "refinement passes; each places patches on the previous pass's boundary",
        "iterations (refinement passes)",
        ge=1,
        recommended=True,
        per_request=True,
        request_le=3,
    )
    confine_passes: bool = option(
        True,
        "later passes change only pixels the first pass's patches covered (no compounding)",
        "confine_passes",
    )
    fallback_iou: float = option(
        0.0,
        "an instance refinement empties, or whose IoU with its input falls below this, is returned as given (0 = off)",
        "fallback IoU",
        ge=0.0,
        lt=1.0,
        recommended=True,
    )
    min_area: int = option(
        0,
        "instances of fewer pixels than this are returned as given (0 = refine all)",
        "minimum instance area (pixels)",
        ge=0,
        recommended=True,
    )
    change_margin: float = option(
        0.0,
        "a pixel changes from its input value only where the refined probability is beyond 0.5 by more "
        "than this (0 = plain threshold): where the network is unsure, the detector's mask stands",
        "change margin",
        ge=0.0,
        lt=0.5,
        recommended=True,
    )
    fragment_reach: int = option(
        -1,
        "pixels refinement adds to a part of a mask detached from its largest part must lie within this many "
        "pixels of the input mask (-1 = no limit): a detector's stray blob may be refined, shrink or vanish, "
        "but not grow over a neighbouring object",
        "fragment reach (pixels)",
        ge=-1,
        recommended=True,
    )
    keep_thin: int = option(
        0,
        "parts of an input mask narrower than 2r+1 pixels (what an opening with a disk of radius r removes: "
        "cords, lines, poles, bike frames, corner tips) are never removed by refinement, unless another "
        "instance won them (0 = off): the refiner erases thin structures that a nearly right mask kept",
        "keep thin (radius, pixels)",
        ge=0,
        le=16,
        recommended=True,
        per_request=True,
    )
    ungated_shift: float = option(
        0.0,
        "with the quality gate: an instance whose mask the refiner, ungated, would move by at least this many "
        "pixels on average (pixels changed per pixel of the input's boundary) gets the ungated answer, whatever "
        "the gate says of its patches (0 = off): the gate guards masks that are already right, and a mask the "
        "refiner moves that far was not",
        "ungated shift (pixels)",
        ge=0.0,
        recommended=True,
        per_request=True,
    )
    ungated_removal_margin: float = option(
        -1.0,
        "with ungated_shift: the change margin foreground pixels need to leave an instance given its ungated "
        "answer (-1 = the change margin): a mask the refiner moves that far is trusted more to lose pixels "
        "than to gain them",
        "ungated removal margin",
        ge=-1.0,
        lt=0.5,
        recommended=True,
    )
    ungated_keep_thin: int = option(
        0,
        "with ungated_shift: keep_thin's radius for instances given their ungated answer, where it is larger "
        "than keep_thin (0 = keep_thin's)",
        "ungated keep thin (radius, pixels)",
        ge=0,
        le=16,
        recommended=True,
    )
    quality_gate: bool = option(
        True,
        "with a checkpoint that has a patch-quality gate, patches the gate expects to break more pixels "
        "than they fix keep the coarse mask (no effect without a gate)",
        "quality_gate",
    )

    def __post_init__(self) -> None:
        for name, info in option_infos().items():
            info.check(getattr(self, name))

    def updated(self, **changes: Any) -> RefineOptions:
        """A copy with the given fields changed; ``None`` values leave a field as it is."""
        changes = {k: v for k, v in changes.items() if v is not None}
        check_option_names(changes)
        return dataclasses.replace(self, **changes) if changes else self


def option_infos() -> dict[str, OptionInfo]:
    """Every option's :class:`OptionInfo`, in declaration order."""
    return {f.name: f.metadata["option"] for f in dataclasses.fields(RefineOptions)}


def check_option_names(names: Iterable[str]) -> None:
    """TypeError naming every name that is not a refine option."""
    unknown = set(names) - set(option_infos())
    if unknown:
        raise TypeError(f"unknown refine option(s): {', '.join(sorted(unknown))}")


def option_types() -> dict[str, type]:
    """Every option's Python type (bool, int or float)."""
    hints = get_type_hints(RefineOptions)
    return {name: hints[name] for name in option_infos()}


DEFAULT_OPTIONS = RefineOptions()


@dataclass
class RefineStats:
    """Running totals, for progress bars, benchmarks and /metrics. Safe to update from many
    threads: every change goes through ``add`` under one lock.

    images / instances count each image once, whatever the number of passes; patches and
    batches count the network's work; fallbacks are instances returned as they came in by
    the ``fallback_iou`` rule, small ones those left alone by ``min_area``; gated counts
    patches the quality gate kept coarse (early_gated of them without their second opinion: the
    mirrored forward of flip TTA, or the companion refiner's); thin_kept instances got back thin
    parts of their input mask that refinement had removed (``keep_thin``); ungated instances got
    their ungated answer (``ungated_shift``).
    """

    images: int = 0
    instances: int = 0
    patches: int = 0
    batches: int = 0
    fallbacks: int = 0
    small: int = 0
    gated: int = 0
    early_gated: int = 0
    thin_kept: int = 0
    ungated: int = 0
    seconds: dict[str, float] = field(default_factory=lambda: {"extract": 0.0, "network": 0.0, "reassemble": 0.0})
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str | None = None, seconds: float = 0.0, **counts: int) -> None:
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)
            if stage is not None:
                self.seconds[stage] += seconds
