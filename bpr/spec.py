"""One description of a Refiner to build, shared by every door that builds one from options.

``bpr-refine`` maps its flags onto a :class:`RefinerSpec`, the service maps its ``BPR_*``
settings onto the same class (``service.settings.Settings.refiner_spec``), Ray workers
rebuild it from JSON, and all of them build with :meth:`RefinerSpec.build`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpr.options import check_option_names, option_infos
from bpr.refiner import Refiner


@dataclass(frozen=True)
class RefinerSpec:
    """What to load and how to run it. ``None`` = what the checkpoint / library recommends.

    ``options`` are the defaults of every call, by :class:`bpr.options.RefineOptions` field
    name (a missing or None value keeps the checkpoint's recommendation or the library's).
    """

    checkpoint: Path | None = None
    device: str = "cpu"
    precision: str = "auto"
    backend: str | None = None  # None: BPR_BACKEND, else auto (bpr.backends)
    batch_size: int = 64
    patch_size: int | None = None
    input_size: int | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_option_names(self.options)

    def build(self) -> Refiner:
        """Load the network and make the Refiner (ModelNotAvailableError / BprInputError on bad input)."""
        options = {name: value for name, value in self.options.items() if value is not None}
        return Refiner.from_checkpoint(
            self.checkpoint,
            input_size=self.input_size,
            device=self.device,
            precision=self.precision,
            backend=self.backend,
            batch_size=self.batch_size,
            patch_size=self.patch_size,
            **options,
        )

    @classmethod
    def from_fields(cls, values: dict[str, Any]) -> RefinerSpec:
        """A spec from one flat mapping holding loading fields and option names alike (CLI flags)."""
        options = {name: values[name] for name in option_infos() if name in values}
        loading = {name: values[name] for name in cls.__dataclass_fields__ if name != "options" and name in values}
        return cls(**loading, options=options)
