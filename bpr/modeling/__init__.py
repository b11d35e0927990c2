"""The refiner network (HRNet + mask branch + FCN head) and its checkpoints."""

from bpr.modeling.checkpoint import load_refiner, save_refiner
from bpr.modeling.refiner_net import RefinerConfig, RefinerNet

__all__ = ["RefinerConfig", "RefinerNet", "load_refiner", "save_refiner"]
