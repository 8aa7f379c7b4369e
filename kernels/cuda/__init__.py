"""The "cuda" device: Numba CUDA kernels for every op of kernels/reference.py, on the GPU.
One concept a file, each beside its twin section of reference.py (and of kernels/cpu/):

  util.py       availability, launch sizes, device arrays and copies, fills, the reduction,
                the simulator's shared-array lock                            (no twin: host)
  gemm.py       the hand-written tiled GEMM every convolution runs on                (conv)
  im2col.py     im2col / col2im kernels, the column buffer and its tiles             (conv)
  conv.py       conv2d, conv_transpose2d and their backwards                         (conv)
  pool.py       max and average pooling                                              (pool)
  pointwise.py  relu, dropout, crop, eltwise sums, scale; LRN             (pointwise, lrn)
  loss.py       softmax cross-entropy, reduced on the device                         (loss)
  solver.py     SGD and Adam steps, in place                                       (solver)
  arrays.py     asarray, to_host, zeros_like, add, accumulate                      (arrays)
  score.py      argmax, the confusion histogram                                     (score)

Same names and signatures as the reference (the dispatcher looks every op up by name on this
package). Arrays are Numba device arrays, NCHW; host arrays are accepted too and copied over;
results are always device arrays (the loss is a Python float: it is reduced on the device and
one number comes back). ``to_device``, ``to_host`` and ``is_device_array`` move arrays for the
rest of the engine (in the dispatch table: ``asarray`` is ``to_device``); ``gemm`` is the tiled
GEMM on its own; ``SIM`` says whether this is Numba's simulator.

Every kernel walks its work with a grid-stride loop (``for t in range(cuda.grid(1), n,
cuda.gridsize(1))``): the launch size is a tuning choice, never a correctness one, which is
what lets the tests run tiny grids in Numba's simulator (NUMBA_ENABLE_CUDASIM=1).
Importing this package without a GPU or the simulator raises ImportError with the reason
(util.py raises it, before any kernel is defined); minifcn imports it only when "cuda" is asked
for.
"""
from __future__ import annotations

# util first: it is what raises ImportError when CUDA cannot run here.
from .util import (SIM, cuda, empty, fill, fill_channels, flat, is_device_array,  # noqa: F401
                   launch, sum_planes, to_device, to_host, typed, zeros)
from .arrays import accumulate, add, asarray, zeros_like  # noqa: F401
from .conv import (conv2d, conv2d_backward, conv_transpose2d,  # noqa: F401
                   conv_transpose2d_backward)
from .loss import softmax_cross_entropy  # noqa: F401
from .pointwise import (concat, concat_backward, crop, crop_backward,  # noqa: F401
                        dropout, dropout_backward,
                        eltwise_sum, lrn, lrn_backward, relu, relu_backward,
                        relu_backward_bits, relu_bits, scale)
from .pool import (avg_pool2d, avg_pool2d_backward, max_pool2d,  # noqa: F401
                   max_pool2d_backward)
from .score import argmax, confusion_update  # noqa: F401
from .solver import adam_update, sgd_update  # noqa: F401
# Last: the name gemm is the function (the public tiled GEMM), not the submodule gemm.py; its
# tuning knobs (FORCE_TM, TPB, ...) are reached as importlib.import_module(__name__ + ".gemm").
from .gemm import gemm  # noqa: F401

__all__ = ["SIM", "cuda", "empty", "fill", "fill_channels", "flat", "is_device_array", "launch",
           "sum_planes", "to_device", "to_host", "typed", "zeros", "gemm",
           "conv2d", "conv2d_backward", "conv_transpose2d", "conv_transpose2d_backward",
           "max_pool2d", "max_pool2d_backward", "avg_pool2d", "avg_pool2d_backward",
           "relu", "relu_backward", "relu_bits", "relu_backward_bits", "dropout",
           "dropout_backward", "crop", "crop_backward",
           "eltwise_sum", "scale", "concat", "concat_backward", "lrn", "lrn_backward",
           "softmax_cross_entropy",
           "sgd_update", "adam_update", "asarray", "zeros_like", "add", "accumulate",
           "argmax", "confusion_update"]
