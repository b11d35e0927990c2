"""bpr: Boundary Patch Refinement for instance segmentation masks.

    from bpr import Refiner
    refined = Refiner.from_checkpoint().refine(image, masks)  # HxWx3 uint8 RGB, NxHxW bool -> NxHxW bool

``Refiner`` is imported lazily so that commands which never touch the network (bpr-eval)
start without loading torch.
"""

from typing import TYPE_CHECKING, Any

from bpr.errors import BprInputError, ModelNotAvailableError

if TYPE_CHECKING:
    from bpr.refiner import Refiner

__version__ = "0.1.0"
__all__ = ["BprInputError", "ModelNotAvailableError", "Refiner", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Refiner":
        from bpr.refiner import Refiner

        return Refiner
    raise AttributeError(f"module 'bpr' has no attribute {name!r}")
