"""What every CUDA kernel file shares: the availability check, the simulator's shared-array
lock, launch sizes, device arrays (host <-> device copies, in-place updates of host arrays),
fills and the per-channel reduction. No twin in kernels/reference.py: on the host there is
nothing to copy.

Importing this module (and so minifcn.kernels.cuda) raises ImportError with one clear line when
CUDA cannot run here; the dispatcher turns that into "device 'cuda' is not available: ...".

Under Numba's simulator (NUMBA_ENABLE_CUDASIM=1, set before numba is first imported) every
CUDA thread is a Python thread, so launches are kept tiny there: each kernel walks its work
with a grid-stride loop, so any grid size gives the same answer, and the simulator simply
launches a few small blocks.
"""
from __future__ import annotations

import functools
import math
import sys
import threading

import numpy as np

try:
    from numba import cuda
except ImportError as e:            # a numba whose CUDA target now lives in numba-cuda
    raise ImportError(f"numba.cuda cannot be imported ({e}); "
                      "install it with: pip install numba-cuda") from None

# Whether numba.cuda is the simulator. Asked of the module itself, not of numba.config: with
# the numba-cuda package the simulator switch is read by numba.cuda's own config when it is
# first imported, which may be later than (and disagree with) numba's.
SIM = cuda.is_available.__module__.startswith("numba.cuda.simulator")
if not cuda.is_available():
    raise ImportError("no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 before numba is imported "
                      "to run the CUDA kernels in Numba's simulator)")

if SIM:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray as _SimArray


def _lock_simulator_shared_arrays():
    """Make the simulator's cuda.shared.array thread-safe.

    The simulator gives the threads of a block one array per source line that asks for one,
    looked up in a dict: `get`, and if missing, `np.empty` then store. That check-then-set is
    not locked, so when the interpreter switches threads between the two (more likely on a busy
    machine), two threads of one block each make their own "shared" array, and a correct kernel
    (our tiled GEMM) returns a wrong product now and then. Found as a flaky CI failure: a cuda
    training step differing from the cpu one by 2e-3, one run in tens. The replacement does the
    same lookup, keyed the same way (file and line of the caller), under a lock; dynamic shared
    memory (shape 0) is left to the original, which has no such race."""
    from numba.cuda.simulator import kernelapi
    cls = kernelapi.FakeCUDAShared
    if getattr(cls.array, "_minifcn_locked", False):
        return
    unlocked, lock = cls.array, threading.Lock()

    def array(self, shape, dtype):
        if shape == 0 or not isinstance(getattr(self, "_allocations", None), dict):
            return unlocked(self, shape, dtype)
        if not isinstance(dtype, np.dtype):
            dtype = kernelapi.numpy_support.as_dtype(dtype) \
                if isinstance(dtype, kernelapi.types.Type) else np.dtype(dtype)
        caller = sys._getframe(1)
        key = (caller.f_code.co_filename, caller.f_lineno)
        with lock:
            res = self._allocations.get(key)
            if res is None:
                res = self._allocations[key] = np.empty(shape, dtype)
        return res
    array._minifcn_locked = True
    cls.array = array


if SIM:
    _lock_simulator_shared_arrays()

# Threads per block of the 1-D elementwise kernels, and the most blocks one launch asks for.
# A real GPU gets enough blocks to fill every SM several times over (more would only add
# scheduling work: the grid-stride loop covers the rest); the simulator gets a handful.
THREADS = 32 if SIM else 256
RED_THREADS = 32 if SIM else 256     # threads of a reduction block (size of its shared array)
_SIM_BLOCKS = 4


@functools.cache
def sm_count() -> int:
    """Streaming multiprocessors of the current GPU (1 in the simulator)."""
    return 1 if SIM else cuda.get_current_device().MULTIPROCESSOR_COUNT


def max_blocks() -> int:
    return _SIM_BLOCKS if SIM else 32 * sm_count()


def launch(n: int, threads: int = THREADS):
    """(blocks, threads) for a grid-stride loop over n items."""
    return max(1, min(math.ceil(n / threads), max_blocks())), threads


def typed(factory):
    """Decorate `factory(T) -> kernel`, where T is np.float32 or np.float64: the kernel is built
    and compiled once per dtype. Kernels that hold a running sum, a shared-memory tile or a
    typed zero need this, because a bare 0.0 in a kernel is float64 and would silently turn a
    float32 kernel into float64 arithmetic (slow on most GPUs)."""
    cache = {}

    @functools.wraps(factory)
    def get(dtype):
        key = np.dtype(dtype)
        if key not in cache:
            cache[key] = factory(key.type)
        return cache[key]
    return get


# ----------------------------------------------------------------------------- arrays
def is_device_array(a) -> bool:
    """True for a Numba device array (the simulator's stand-in too), or any object exposing
    __cuda_array_interface__ (CuPy, PyTorch) on a real GPU."""
    if SIM:
        return isinstance(a, _SimArray)
    return cuda.is_cuda_array(a)


def to_device(a):
    """A C-contiguous Numba device array holding `a`. Device arrays pass through without a copy
    (foreign GPU arrays are wrapped, not copied); host arrays are copied over."""
    if is_device_array(a):
        if not hasattr(a, "copy_to_host"):            # CuPy / PyTorch: wrap zero-copy
            a = cuda.as_cuda_array(a)
        if a.is_c_contiguous():
            return a
        # A strided view (someone sliced a device array): rare, so take the plain route of a
        # host round trip rather than a strided-copy kernel for every rank.
        return cuda.to_device(_c_layout(a.copy_to_host()))
    return cuda.to_device(_c_layout(a))


def _c_layout(a):
    """`a` C-contiguous with the textbook strides. NumPy gives an axis of length 1 any stride
    (label[None] has stride 0 there) and still calls the array contiguous; a device array
    copies those strides, and then numba-cuda's reshape (our flat()) refuses it on a GPU
    ("operation requires copying"), while the simulator's, being NumPy's, does not mind."""
    a = np.ascontiguousarray(a)
    strides, step = [], a.itemsize
    for n in reversed(a.shape):
        strides.append(step)
        step *= n
    strides = tuple(reversed(strides))
    if a.strides != strides:
        a = np.lib.stride_tricks.as_strided(a, a.shape, strides)   # same bytes, no copy
    return a


def to_host(a):
    """A NumPy array holding `a` (host arrays and Python numbers pass through)."""
    if is_device_array(a):
        if not hasattr(a, "copy_to_host"):
            a = cuda.as_cuda_array(a)
        return a.copy_to_host()
    return np.asarray(a)


def on_device(*arrays):
    """The arrays as device arrays (to_device of each; None stays None): how every op takes its
    inputs, so host arrays work too."""
    return [None if a is None else to_device(a) for a in arrays]


# Solver steps update parameters and their buffers in place. On this device they are meant to
# be device arrays (nothing crosses the bus); a host array still works, through a round trip.
def in_place(op, arrays, step):
    """Run step(*device_arrays), then write results back into any host arrays given."""
    devs = [to_device(a) for a in arrays]
    for a, d in zip(arrays, devs):
        if d is not a and is_device_array(a):
            raise ValueError(f"{op}: a strided device array cannot be updated in place")
    step(*[flat(d) for d in devs])
    for a, d in zip(arrays, devs):
        if d is not a:
            np.copyto(a, d.copy_to_host())



def empty(shape, dtype):
    return cuda.device_array(tuple(int(s) for s in shape), dtype=np.dtype(dtype))


def flat(a):
    """The 1-D view of a C-contiguous device array (no copy)."""
    return a.reshape(a.size)


@cuda.jit
def _fill_kernel(a, value):
    for t in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[t] = value


def fill(a, value):
    """a[...] = value on the device (a C-contiguous device array); returns a."""
    if a.size:
        af = flat(a)
        _fill_kernel[launch(a.size)](af, a.dtype.type(value))
    return a


def zeros(shape, dtype):
    return fill(empty(shape, dtype), 0)


@cuda.jit
def _fill_channels_kernel(y, b, plane):
    """y[n, f, :, :] = b[f] on the flat view of y; plane = H*W."""
    F = b.size
    for t in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[t] = b[(t // plane) % F]


def fill_channels(y, b):
    """y[n, f] = b[f] for an NCHW device array y (a bias written before a GEMM adds onto it)."""
    if y.size:
        _fill_channels_kernel[launch(y.size)](flat(y), b, y.shape[2] * y.shape[3])
    return y


# ----------------------------------------------------------------------------- reduction
@cuda.jit
def _sum_planes_kernel(x, out):
    """out[f] = sum over n and l of x[n, f, l], x of shape (N, F, L).

    One block per f (blocks stride over f): its threads stride over the N*L values, each keeps
    a private sum, then a shared-memory tree halves the partial sums down to one. Sums are
    float64 whatever the dtype: a VGG feature map has ~10^5 values per channel, and this pass
    reads memory once, so the wider sum costs nothing noticeable."""
    part = cuda.shared.array(RED_THREADS, np.float64)
    tid = cuda.threadIdx.x
    N, F, L = x.shape
    for f in range(cuda.blockIdx.x, F, cuda.gridDim.x):
        acc = 0.0
        for t in range(tid, N * L, RED_THREADS):
            acc += x[t // L, f, t % L]
        part[tid] = acc
        cuda.syncthreads()
        step = RED_THREADS // 2
        while step > 0:
            if tid < step:
                part[tid] += part[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            out[f] = part[0]
        cuda.syncthreads()          # part is reused by this block's next f


def sum_planes(x3, out=None):
    """(N, F, L) device array -> out[f] = x3[:, f, :].sum() (out: a new (F,) array of x3's
    dtype unless given, e.g. float64 for a loss)."""
    N, F, L = x3.shape
    if out is None:
        out = empty((F,), x3.dtype)
    blocks = max(1, min(F, 1024 if not SIM else _SIM_BLOCKS))
    _sum_planes_kernel[blocks, RED_THREADS](x3, out)
    return out
