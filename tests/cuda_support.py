"""Shared by the CUDA test modules: import the CUDA kernels or skip the module."""
import os
import sys

import pytest


def load_cuda():
    """Import minifcn.kernels.cuda, or skip the calling module with the reason."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" and "numba.cuda" not in sys.modules:
        # numba may already have been imported (by another test module) before the variable
        # was set; plain numba reads it into numba.config at import, so re-read it.
        from numba.core import config
        if not config.ENABLE_CUDASIM:
            config.reload_config()
    try:
        from minifcn.kernels import cuda as K
    except ImportError as e:
        pytest.skip(f"CUDA kernels unavailable: {e}", allow_module_level=True)
    return K
