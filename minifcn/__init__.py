"""minifcn: Fully Convolutional Networks (Long, Shelhamer, Darrell, CVPR 2015) from scratch.

    import minifcn
    from minifcn import functional as F     # stateless ops: conv2d, max_pool2d, ...
    minifcn.set_device("cpu")               # "numpy" (reference), "cpu" (Numba), "cuda"
"""
from . import functional
from .coordmap import coord_map, receptive_field, rf_table
from .kernels import DEVICES, DeviceUnavailable, device, get_device, set_device

__version__ = "0.1.0"

__all__ = ["functional", "DEVICES", "DeviceUnavailable", "device", "get_device", "set_device",
           "coord_map", "receptive_field", "rf_table"]
