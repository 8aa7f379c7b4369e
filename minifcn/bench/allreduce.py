"""The allreduce section: what data-parallel training (minifcn.distributed) costs here.

Under `mpiexec -n 2` (workers.run_worker with the mpich wheel's mpiexec), rank 0 reporting:
  * Allreduce bandwidth: mpi4py's bare Allreduce of one buffer, and our GradientReducer on
    FCN-8s's gradients (134 M parameters, 537 MB) in buckets (packing and unpacking
    included), both as algorithm bandwidth (bytes / s) and bus bandwidth (x 2(N-1)/N, the
    bytes a ring Allreduce moves per rank: comparable across N, as NCCL's tests give it);
  * training steps (Trainer.step) of fcn8s_tiny and FCN-8s with each rank's batch, with and
    without overlap: the step, and the time spent waiting for the Allreduce after backward
    (what compute did not hide; without overlap that is the whole Allreduce).
And in a fresh process alone: the same steps on 1 rank, with all the cores and with one
rank's share of them (what each of the 2 ranks has). Two ranks on this
2-core box get one core each, so "2 ranks" here measures the cost of the machinery (copies,
waits, a shared memory bus), not a speed-up: a real cluster puts a rank on each node or GPU
(benchmarks/allreduce_scaling.py models that)."""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from .timing import set_threads

MB = 1 << 20


def _note(msg):
    return [{"section": "allreduce", "op": "data parallel", "impl": "-", "note": msg}]


def allreduce_rows(cfg, with_torch=False):
    """The section's rows: one process alone (1 rank), then two under mpiexec."""
    from .. import distributed
    from .workers import run_worker, user_env
    try:
        import mpi4py  # noqa: F401
        mpiexec = distributed.find_mpiexec()
    except ImportError as e:
        return _note(f"mpi4py is not installed ({e}): {distributed.INSTALL}")
    except distributed.MPISetupError as e:
        return _note(str(e))
    cores = os.cpu_count() or 1
    rows = []
    # 1 rank with all the cores, 1 rank with a rank's share of them (each of the 2 ranks'
    # compute alone), then 2 ranks
    for ranks, threads in sorted({(1, cores), (1, max(1, cores // 2)), (2, max(1, cores // 2))},
                                 key=lambda rt: (rt[0], -rt[1])):
        env = dict(user_env(), NUMBA_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
                   OPENBLAS_NUM_THREADS=str(threads))
        prefix = [mpiexec, "-n", str(ranks)] if ranks > 1 else []
        res = run_worker("allreduce", cfg, threads=threads, prefix=prefix, env=env)
        rows += _note(res["error"]) if "error" in res else res["rows"]
    return hidden(rows)


# ----------------------------------------------------------------------------- in each rank
def worker(cfg, threads=None):
    """What each rank runs; rank 0 returns {"rows": [...]}, the others None."""
    from .. import distributed
    if threads:
        set_threads(threads)
    comm = distributed.world()
    c = cfg["allreduce"]
    rows = bandwidth_rows(comm, c) if comm is not None else []
    ranks = 1 if comm is None else comm.size
    for net in c["nets"]:
        for overlap in ((True, False) if comm is not None else (True,)):
            rows.append(step_row(comm, net, c, overlap, f"{ranks} x {threads} thread(s)"))
    return {"rows": rows} if comm is None or comm.rank == 0 else None


def _time(fn, comm, repeat):
    """Median seconds of fn() on rank 0, every rank starting together (a Barrier)."""
    fn()
    runs = []
    for _ in range(repeat):
        comm.comm.Barrier()
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return statistics.median(runs)


def _bw(section_op, impl, shape, seconds, nbytes, ranks, note=""):
    alg = nbytes / seconds / 1e9
    return {"section": "allreduce", "op": section_op, "impl": impl, "shape": shape,
            "ms": seconds * 1e3, "gb_s": alg, "bus_gb_s": alg * 2 * (ranks - 1) / ranks,
            "note": note}


def bandwidth_rows(comm, c):
    """mpi4py's bare Allreduce of one buffer of each size, then our buckets on the
    gradients of c["model"] (filled: the pages are real), at each bucket size."""
    from .. import distributed, models
    MPI, rows, n = comm.MPI, [], comm.size
    for mb in c["buffers_mb"]:
        buf = np.ones(int(mb * MB) // 4, np.float32)
        t = _time(lambda: comm.comm.Allreduce(MPI.IN_PLACE, buf), comm, c["repeat"])
        rows.append(_bw(f"Allreduce {mb:g} MB float32", "mpi4py, one buffer",
                        f"{n} ranks", t, buf.nbytes, n))
        del buf
    net = models.build(c["model"], num_classes=21, loss=True)
    grads = 0
    for layer in net.layers.values():
        for p in layer.params:
            if layer.trainable(p):
                layer.grads[p] = np.ones_like(layer.params[p])
                grads += layer.grads[p].nbytes
    for bucket_mb in c["bucket_mb"]:
        reducer = distributed.GradientReducer(net, comm, bucket_mb=bucket_mb)

        def reduce():
            reducer.begin()
            reducer.finish()
        t = _time(reduce, comm, c["repeat"])
        rows.append(_bw(f"Allreduce {grads / MB:.3g} MB float32", "ours, "
                        f"{len(reducer.buckets)} buckets of {bucket_mb:g} MB",
                        f"{n} ranks, {c['model']} grads", t, grads, n,
                        "packing into the buckets and back included"))
    return rows


def step_row(comm, spec, c, overlap, impl):
    """Median Trainer.step of spec's net, each rank with spec's batch (random images of one
    size), SGD as the reference FCNs train; the Allreduce wait per step where there is one."""
    from .. import data, models, train
    rng = np.random.default_rng(0)
    size, batch = spec["size"], spec["batch"]
    images = [(rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
               rng.integers(0, spec["classes"], (size, size)).astype(np.uint8))
              for _ in range(2 * batch * (1 if comm is None else comm.size))]
    net = models.build(spec["model"], num_classes=spec["classes"], loss=True)
    solver = train.SGD(net, lr=1e-10, momentum=0.99)
    loader = data.Loader(images, batch_size=batch, seed=0)
    with tempfile.TemporaryDirectory() as out:
        trainer = train.Trainer(net, solver, loader, out, progress=False, comm=comm,
                                overlap=overlap)
        steps, waits, packs, fwd, bwd = [], [], [], [], []
        for i in range(c["warmup"] + c["steps"]):
            if comm is not None:
                comm.comm.Barrier()
                pack0 = trainer.reducer.stats["pack_s"]
            t0 = time.perf_counter()
            trainer.step()
            if i < c["warmup"]:
                continue
            steps.append(time.perf_counter() - t0)
            fwd.append(sum(v[0] for v in net.timings.values()))
            bwd.append(sum(v[1] for v in net.timings.values()))
            if comm is not None:
                waits.append(trainer.reducer.last["wait_s"])
                packs.append(trainer.reducer.stats["pack_s"] - pack0)
    ranks = 1 if comm is None else comm.size
    step = statistics.median(steps)
    row = {"section": "allreduce", "op": f"{spec['model']} step", "impl": impl +
           ("" if comm is None else (", overlap" if overlap else ", no overlap")),
           "shape": f"batch {batch}/rank, {size}x{size}", "step_ms": step * 1e3,
           "img_s": ranks * batch / step, "fwd_ms": statistics.median(fwd) * 1e3,
           "bwd_ms": statistics.median(bwd) * 1e3,
           "params_mb": sum(v.nbytes for v in net.params().values()) / MB}
    if comm is not None:
        row.update(wait_ms=statistics.median(waits) * 1e3,
                   pack_ms=statistics.median(packs) * 1e3,
                   buckets=len(trainer.reducer.buckets))
    return row


def hidden(rows):
    """Per net: the share of the Allreduce that overlap hid, 1 - wait(overlap) / wait(no
    overlap), written into the overlap row as hidden_pct."""
    for r in rows:
        if r.get("impl", "").endswith(", overlap"):
            other = next((o for o in rows if o["op"] == r["op"] and
                          o["impl"] == r["impl"].replace(", overlap", ", no overlap")), None)
            if other and other.get("wait_ms"):
                r["hidden_pct"] = 100 * (1 - r["wait_ms"] / other["wait_ms"])
    return rows
