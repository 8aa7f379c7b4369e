"""Data-parallel training over MPI ranks (Horovod's model): every rank holds the whole net,
reads its own slice of each global batch, and the ranks sum their gradients before every
solver step, so N ranks x batch b train as one process with batch N*b does.

    mpiexec -n 2 minifcn train --batch 4 ...       # the same weights as --batch 8 in one process
    trainer = Trainer(net, solver, loader, "runs/x", comm=MPI.COMM_WORLD)     # in Python

It needs mpi4py and an MPI: `pip install 'minifcn[mpi]'` brings both (the mpich wheel, with
its mpiexec). What is here:
  world()            the communicator when an MPI launcher (mpiexec, srun) started us, None
                     when not; the usual set-up mistakes are refused in one line
  Comm               the few collectives training needs, on NumPy buffers (never pickle)
  GradientReducer    gradients summed in buckets, in place: a bucket's Iallreduce starts as
                     soon as backward has made its last gradient (Net.backward's hook), so it
                     runs while backward goes on below; finish() waits before the solver step
  loss_share         each rank's share of a normalised loss: sum_r (n_r / n) grad(S_r / n_r)
                     is the gradient of S / n, the global batch's loss, where summing the
                     ranks' grad(S_r / n_r) would give a sum of per-rank means
  ShardedStream      a generator whose draws are this rank's part of one draw for the whole
                     global batch (dropout masks, loss sampling): the numbers one process gets
  agreed(), abort    a set-up error on any rank stops every rank with one line; a rank that
                     fails while others wait in a collective brings them down with MPI_Abort
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import functional as F

# (size, rank) variables each launcher sets in its processes' environment
LAUNCHERS = (("PMI_SIZE", "PMI_RANK"),                           # MPICH's mpiexec; srun --mpi=pmi2
             ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),   # Open MPI's mpirun
             ("MV2_COMM_WORLD_SIZE", "MV2_COMM_WORLD_RANK"))     # MVAPICH
INSTALL = "pip install 'minifcn[mpi]' (mpi4py and the mpich wheel, which brings mpiexec)"


class MPISetupError(RuntimeError):
    """MPI is not set up as the launch needs; `rank` is the launcher's rank of this process
    (every process raises it; the command line prints it on rank 0 only)."""

    def __init__(self, message, rank=0):
        super().__init__(message)
        self.rank = rank


class RankFailed(ValueError):
    """Another rank's set-up failed (agreed()): what it said, with its rank."""


class Quiet(Exception):
    """Stop this rank without a word: another rank reports the error."""

    def __init__(self, code=1):
        super().__init__(code)
        self.code = code


# ----------------------------------------------------------------------------- set-up
def launched():
    """(size, rank, variable) that an MPI launcher put in our environment, or None."""
    for size_var, rank_var in LAUNCHERS:
        if size_var in os.environ:
            try:
                return int(os.environ[size_var]), int(os.environ.get(rank_var, 0)), size_var
            except ValueError:
                return None
    return None


def world():
    """The world communicator (a Comm) when a launcher started more than one process; None
    when we run alone (no launcher, or -n 1). MPISetupError when mpi4py is missing or its
    MPI is not the launcher's (each process then sees a world of 1: N copies of one run)."""
    got = launched()
    if got is None or got[0] <= 1:
        return None
    size, rank, var = got
    try:
        with warnings.catch_warnings(record=True) as said:   # mpi4py warns of another MPI's
            warnings.simplefilter("always")                  # launcher in several lines: we
            from mpi4py import MPI                           # say it in one, below
    except ImportError as e:
        raise MPISetupError(f"an MPI launcher started {size} processes ({var}={size}) but "
                            f"mpi4py cannot be imported ({e}): {INSTALL}", rank) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() == size:
        for w in said:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    else:
        lib = " ".join(MPI.Get_library_version().strip().splitlines()[0].split())
        raise MPISetupError(
            f"the launcher started {size} processes ({var}={size}) but this one's MPI world "
            f"has {comm.Get_size()}: that mpiexec is not of the MPI mpi4py uses ({lib}); "
            f"launch with that MPI's mpiexec ({_mpiexec_hint()})", rank)
    return Comm(comm)


def find_mpiexec():
    """The mpiexec beside this Python (the mpich wheel's, in a venv) or on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("mpiexec")
    if found:
        return found
    raise MPISetupError(f"no mpiexec: none beside {sys.executable} and none on PATH; {INSTALL}")


def _mpiexec_hint():
    try:
        return find_mpiexec()
    except MPISetupError:
        return INSTALL


def wrap(comm):
    """A Comm for an mpi4py communicator (or a Comm); None for None or a world of one rank,
    which trains exactly as no communicator does."""
    if comm is None:
        return None
    comm = comm if isinstance(comm, Comm) else Comm(comm)
    return comm if comm.size > 1 else None


def select_gpu(comm):
    """Rank r uses GPU r % device_count (call before the net goes to cuda). Returns it."""
    from .kernels import DeviceUnavailable
    try:
        from numba import cuda
        n = len(cuda.gpus)
    except Exception as e:                 # noqa: BLE001 -- no driver, no GPU: say which
        raise DeviceUnavailable(f"device 'cuda' is not available on rank {comm.rank}: "
                                f"{e}") from None
    if n == 0:
        raise DeviceUnavailable(f"device 'cuda': rank {comm.rank} sees no GPU")
    index = comm.rank % n
    cuda.select_device(index)
    return index


def cuda_aware(comm):
    """Can MPI read GPU memory? MINIFCN_CUDA_AWARE_MPI=0/1 says so; otherwise MPI 4.1's
    mpi_memory_alloc_kinds info key, which a CUDA-aware MPI gives as '...,cuda:device'."""
    env = os.environ.get("MINIFCN_CUDA_AWARE_MPI")
    if env in ("0", "1"):
        return env == "1"
    try:
        info = comm.comm.Get_info()
        kinds = info.Get("mpi_memory_alloc_kinds") or ""
        info.Free()
    except Exception:                      # noqa: BLE001 -- an older MPI: assume it cannot
        return False
    return "cuda" in kinds


# ----------------------------------------------------------------------------- collectives
class Comm:
    """The collectives training needs, on NumPy buffers (mpi4py's upper-case calls: no
    pickle crosses between ranks)."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()

    def sum(self, values):
        """Element-wise sum over ranks of a vector of floats (a new float64 array)."""
        a = np.array(values, dtype=np.float64).ravel()
        self.comm.Allreduce(self.MPI.IN_PLACE, a)
        return a

    def sum_(self, array):
        """array (a host array) becomes, in place, its element-wise sum over the ranks."""
        self.comm.Allreduce(self.MPI.IN_PLACE, array)
        return array

    def bcast_(self, array, root=0):
        """array becomes root's, in place."""
        self.comm.Bcast(array, root=root)
        return array

    def allgather_int(self, n):
        """[each rank's n] (int64), in rank order."""
        out = np.empty(self.size, np.int64)
        self.comm.Allgather(np.array([n], np.int64), out)
        return out

    def allgather_text(self, text):
        """[each rank's text], in rank order."""
        data = np.frombuffer(text.encode(), np.uint8)
        counts = self.allgather_int(data.size)
        out = np.empty(max(1, int(counts.sum())), np.uint8)
        self.comm.Allgatherv(data, [out, counts.tolist()])
        ends = np.cumsum(counts)
        return [out[e - c:e].tobytes().decode() for c, e in zip(counts, ends)]

    def abort(self, message, code=1):
        """Print message and bring every rank down (MPI_Abort): the others may be waiting in
        a collective this rank will never reach, and would wait for ever."""
        sys.stderr.write(message.rstrip("\n") + "\n")
        sys.stderr.flush()
        time.sleep(0.5)    # let the launcher forward it: MPI_Abort's tear-down may drop it
        self.comm.Abort(code)
        os._exit(code)                       # should Abort return before the launcher kills us


@contextlib.contextmanager
def agreed(comm):
    """Run a set-up step on every rank, then agree on how it went: if any rank raised, every
    rank stops -- rank 0 with its own error or RankFailed naming the failing rank (one line
    for the user), the others with Quiet. The step itself must hold no collective (a rank
    that failed early would leave the others waiting in it)."""
    if comm is None:
        yield
        return
    error = None
    try:
        yield
    except Exception as e:                 # noqa: BLE001 -- every error is reported below
        error = e
    said = comm.allgather_text("" if error is None else f"{type(error).__name__}: {error}")
    failed = [r for r, s in enumerate(said) if s]
    if not failed:
        return
    if comm.rank == 0 and error is not None:
        raise error
    if comm.rank == 0:
        raise RankFailed(f"rank {failed[0]} of {comm.size}: {said[failed[0]]}")
    raise Quiet(1)


def abort(comm, exc, where):
    """A rank failed while the others may wait in a collective: say so, then MPI_Abort."""
    comm.abort(f"{traceback.format_exc()}minifcn: rank {comm.rank} of {comm.size} failed "
               f"{where}: {type(exc).__name__}: {exc}\nminifcn: MPI_Abort: stopping all "
               f"{comm.size} ranks (a checkpoint on disk is never half-written)")


# ----------------------------------------------------------------------------- the loss
def _count(layer, labels):
    """What `layer` (SoftmaxLoss) divides its pixel sum by, for these labels."""
    if layer.normalize == "batch":
        return float(labels.shape[0])
    valid = labels != layer.ignore_label
    if layer.class_weights is None:
        return float(valid.sum())
    w = np.asarray(layer.class_weights, np.float64)
    return float(w[np.where(valid, labels, 0)][valid].sum())


def check_losses(net):
    """Distributed training knows how SoftmaxLoss normalises; refuse other loss layers."""
    for name, layer in net.layers.items():
        if layer.is_loss and getattr(layer, "normalize", None) not in ("valid", "batch", "none"):
            raise ValueError(f"{net.name}: loss layer {name!r} ({type(layer).__name__}) has no "
                             f"normalize of 'valid', 'batch' or 'none': distributed training "
                             f"cannot tell how to combine it over ranks")


def loss_share(net, comm, padding=False):
    """After forward on this rank's part of a global batch: ({loss top: backward seed},
    the global batch's loss). One Allreduce of [n_r, n_r * L_r] per loss layer.

    A loss normalised by a count n ('valid' pixels, their class weights, or 'batch' images)
    is L_r = S_r / n_r on rank r; seeding backward with n_r / n makes the summed gradient
    that of S / n, as one process with the whole batch computes it. 'none' is a plain sum:
    seed 1. A padding rank (no items) seeds 0."""
    names = [n for n, layer in net.layers.items() if layer.is_loss]
    counts, sums = [], []
    for name in names:
        layer, top = net.layers[name], net.tops[name][0]
        labels = F.to_host(net.blobs[net.bottoms[name][1]], device=layer.device)
        n_r = 0.0 if padding else _count(layer, labels)
        loss = 0.0 if padding else float(net.blobs[top])
        counts.append(n_r)
        sums.append(loss if layer.normalize == "none" else n_r * loss)
    total = comm.sum(counts + sums)
    seeds, loss = {}, 0.0
    for i, name in enumerate(names):
        n, s = total[i], total[len(names) + i]
        if net.layers[name].normalize == "none":
            seeds[net.tops[name][0]], part = (0.0 if padding else 1.0), s
        else:
            seeds[net.tops[name][0]], part = (counts[i] / n if n > 0 else 0.0), (
                s / n if n > 0 else 0.0)
        loss += part
    return seeds, loss


# ----------------------------------------------------------------------------- random draws
class ShardedStream:
    """Stands in for a NumPy Generator on one rank. Each random(size) is this rank's part of
    one draw for the global batch, laid out rank after rank: the ranks tell each other how
    many numbers they want (an Allgather of one integer), each skips (PCG64.advance) what the
    ranks before it take, draws its own, and skips the rest. As the global batch is the
    ranks' batches in rank order, rank r gets exactly the numbers one process would use for
    r's items, and every rank's generator ends in the same state (one checkpoint holds it).
    integers() (the cuda dropout's seed) draws one value per rank, each rank taking its own."""

    def __init__(self, gen, comm, padding=lambda: False):
        if not isinstance(gen.bit_generator, np.random.PCG64):
            raise ValueError(f"ShardedStream needs a PCG64 generator (it advances it), got "
                             f"{type(gen.bit_generator).__name__}")
        self.gen, self.comm, self.padding = gen, comm, padding
        self._scratch = np.random.default_rng(0)    # a padding rank's draws: weighed 0

    @property
    def bit_generator(self):
        return self.gen.bit_generator

    def random(self, size=None):
        own = int(np.prod(() if size is None else size))
        pad = self.padding()
        counts = self.comm.allgather_int(0 if pad else own)
        before = int(counts[:self.comm.rank].sum())
        self.gen.bit_generator.advance(before)       # one 64-bit draw per double
        u = self._scratch.random(size) if pad else self.gen.random(size)
        self.gen.bit_generator.advance(int(counts.sum()) - before - int(counts[self.comm.rank]))
        return u

    def integers(self, *args, size=None, **kw):
        shape = (self.comm.size,) + (() if size is None else tuple(np.atleast_1d(size)))
        return self.gen.integers(*args, size=shape, **kw)[self.comm.rank]

    def __getattr__(self, name):
        raise AttributeError(f"ShardedStream shards random() and integers() only, not {name}")


# ----------------------------------------------------------------------------- gradients
@dataclass
class Bucket:
    """Gradients summed by one Allreduce: (layer, param, offset, size, shape) entries in one
    flat buffer of one dtype."""
    dtype: np.dtype
    entries: list = field(default_factory=list)
    size: int = 0
    layers: list = field(default_factory=list)
    buf: np.ndarray = None
    reqs: list = None
    waiting: set = None

    @property
    def nbytes(self):
        return self.size * self.dtype.itemsize


def plan_buckets(net, bucket_bytes):
    """The trainable parameters in the order backward finishes them (last layer first),
    cut into buckets of about bucket_bytes (a bigger parameter gets a bucket of its own)."""
    buckets = []
    for name in reversed(net.layers):
        layer = net.layers[name]
        for p, v in layer.params.items():
            if not layer.trainable(p):
                continue
            dt, n = np.dtype(v.dtype), int(v.size)
            b = buckets[-1] if buckets else None
            if b is None or b.dtype != dt or (b.size and b.nbytes + n * dt.itemsize >
                                               bucket_bytes):
                b = Bucket(dt)
                buckets.append(b)
            b.entries.append((name, p, b.size, n, tuple(v.shape)))
            b.size += n
            if name not in b.layers:
                b.layers.append(name)
    return buckets


class GradientReducer:
    """Sums the ranks' gradients in buckets, in place. Per step: begin() before the last
    backward pass of the step, hook(layer) after each layer's backward (Net.backward calls
    it), finish() before the solver step. With overlap, a bucket's Iallreduce starts when
    its last layer's backward is done and runs while backward goes on below (each hook also
    calls Testall, as MPI progresses a transfer only inside MPI calls); finish() starts what
    is left and waits. Buckets start in the same order on every rank (their nets are alike).

    On cuda the gradients go through a host buffer, unless the MPI is CUDA-aware
    (cuda_aware(); then each device gradient is reduced where it is). stats: seconds in
    Wait (the communication compute did not hide), packing, steps, bytes."""

    def __init__(self, net, comm, bucket_mb=25.0, overlap=True, cuda_aware_mpi=None):
        self.net, self.comm, self.overlap = net, comm, bool(overlap)
        self.cuda_aware = cuda_aware(comm) if cuda_aware_mpi is None else bool(cuda_aware_mpi)
        self.buckets = plan_buckets(net, int(bucket_mb * 2 ** 20))
        self._of_layer = {}
        for b in self.buckets:
            for name in b.layers:
                self._of_layer.setdefault(name, []).append(b)
        self.stats = {"steps": 0, "bytes": 0, "wait_s": 0.0, "pack_s": 0.0, "unpack_s": 0.0}
        self.last = {}

    def begin(self):
        for b in self.buckets:
            b.waiting, b.reqs = set(b.layers), None

    def hook(self, layer_name):
        if not self.overlap:
            return
        for b in self._of_layer.get(layer_name, ()):
            b.waiting.discard(layer_name)
            if not b.waiting and b.reqs is None:
                self._start(b)
        live = [r for b in self.buckets if b.reqs for r in b.reqs]
        if live:
            self.comm.MPI.Request.Testall(live)

    def _direct(self, b):
        return self.cuda_aware and all(self.net.layers[n].device == "cuda" for n in b.layers)

    def _start(self, b):
        t0 = time.perf_counter()
        MPI, comm = self.comm.MPI, self.comm.comm
        if self._direct(b):                 # MPI reads the GPU's memory: no copies
            from numba import cuda
            cuda.synchronize()              # the kernels that made the gradients are done
            b.reqs = [comm.Iallreduce(MPI.IN_PLACE, self.net.layers[name].grads[p])
                      for name, p, *_ in b.entries]
        else:
            if b.buf is None:
                b.buf = np.empty(b.size, b.dtype)
            for name, p, off, n, _ in b.entries:
                layer = self.net.layers[name]
                g = F.to_host(layer.grads[p], device=layer.device)
                np.copyto(b.buf[off:off + n], g.reshape(-1))
            b.reqs = [comm.Iallreduce(MPI.IN_PLACE, b.buf)]
        self.stats["pack_s"] += time.perf_counter() - t0

    def finish(self):
        """Start the buckets not started yet, wait for all, put the sums back as the
        layers' gradients (on the host: views of the bucket buffers, no copy)."""
        for b in self.buckets:
            if b.reqs is None:
                self._start(b)
        t0 = time.perf_counter()
        self.comm.MPI.Request.Waitall([r for b in self.buckets for r in b.reqs])
        t1 = time.perf_counter()
        for b in self.buckets:
            if self._direct(b):
                continue
            for name, p, off, n, shape in b.entries:
                layer = self.net.layers[name]
                layer.grads[p] = F.asarray(b.buf[off:off + n].reshape(shape), device=layer.device)
        t2 = time.perf_counter()
        self.last = {"wait_s": t1 - t0, "unpack_s": t2 - t1}
        self.stats["steps"] += 1
        self.stats["bytes"] += sum(b.nbytes for b in self.buckets)
        self.stats["wait_s"] += t1 - t0
        self.stats["unpack_s"] += t2 - t1


def broadcast_params(net, comm):
    """Every rank takes rank 0's parameters (models are seeded alike, but a rank may have
    read other weights: this makes sure all start from one point)."""
    for key, v in net.params().items():
        layer_name, _, p = key.rpartition(".")
        layer = net.layers[layer_name]
        host = np.ascontiguousarray(F.to_host(v, device=layer.device)).copy()
        comm.bcast_(host)
        layer.params[p] = F.asarray(host, device=layer.device)


@contextlib.contextmanager
def abort_on_error(comm, where):
    """A step with collectives: if this rank raises, the others are brought down with it."""
    try:
        yield
    except BaseException as e:
        if comm is not None:
            abort(comm, e, where)
        raise
