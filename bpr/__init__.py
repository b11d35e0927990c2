"""bpr: Boundary Patch Refinement for instance segmentation masks.

    from bpr import Refiner
    refined = Refiner(checkpoint="models/bpr_default.pt").refine(image, masks)
"""

from bpr.errors import BprInputError, ModelNotAvailableError
from bpr.refiner import Refiner

__version__ = "0.1.0"
__all__ = ["BprInputError", "ModelNotAvailableError", "Refiner", "__version__"]
