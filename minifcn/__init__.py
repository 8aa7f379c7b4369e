"""minifcn: Fully Convolutional Networks (Long, Shelhamer, Darrell, CVPR 2015) from scratch.

    import minifcn
    from minifcn import functional as F     # stateless ops: conv2d, max_pool2d, ...
    minifcn.set_device("cpu")               # "numpy" (reference), "cpu" (Numba), "cuda"

The folder kernels/ is installed as the subpackage minifcn.kernels (setup.cfg). In a plain
checkout that nobody installed, it sits beside this folder instead: it is then loaded from
there under the same name, so `import minifcn` works from the repository root either way.
"""
import importlib.util as _util
import os as _os
import sys as _sys

if _util.find_spec(__name__ + ".kernels") is None:
    _dir = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))),
                         "kernels")
    _spec = _util.spec_from_file_location(__name__ + ".kernels",
                                          _os.path.join(_dir, "__init__.py"),
                                          submodule_search_locations=[_dir])
    if _spec is None:
        raise ImportError(f"minifcn: the kernels package is neither installed nor at {_dir}")
    kernels = _sys.modules[_spec.name] = _util.module_from_spec(_spec)
    _spec.loader.exec_module(kernels)

from . import functional  # noqa: E402
# models first: it registers the section-5 nets of scene_models, which imports it back
from . import models  # noqa: E402,F401
from .inference import load  # noqa: E402  (model = minifcn.load(path); model.predict(img))
from .coordmap import coord_map, receptive_field, rf_table  # noqa: E402
from .kernels import DEVICES, DeviceUnavailable, device, get_device, set_device  # noqa: E402

__version__ = "0.1.0"

__all__ = ["functional", "DEVICES", "DeviceUnavailable", "device", "get_device", "set_device",
           "coord_map", "receptive_field", "rf_table", "load"]
