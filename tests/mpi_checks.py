"""Checks that need two ranks, run by tests/test_distributed.py as

    mpiexec -n 2 python tests/mpi_checks.py OUT_DIR

Rank 0 writes what it measured to OUT_DIR/results.json; the test asserts on it. For each loss
normalisation: 2 ranks x batch 4 trained 3 iterations, then a fresh trainer resumes to 6,
against one process with batch 8 trained 6 iterations straight -- float64, iter_size 2,
dropout, loss sampling, random crops and flips, a dataset whose epochs end in a short batch
(so rank 1 gets padding), buckets small enough that there are several. Then the 2-rank
checkpoint at iteration 3 resumed by one process (resharding), a different global batch
refused, and validation split over the ranks against validation in one process.
"""
import json
import os
import shutil
import sys

import numpy as np
from mpi4py import MPI

from minifcn import layers as L
from minifcn import train
from minifcn.data import Loader, synthetic_splits
from minifcn.distributed import Comm
from minifcn.net import Net

OUT = sys.argv[1]
COMM = MPI.COMM_WORLD
RANK = COMM.Get_rank()
TRAIN, VAL = synthetic_splits(20, 5, seed=3, num_classes=3, size=(24, 32))
TRAIN = [TRAIN[i] for i in range(len(TRAIN))]    # 20 items: global batches 8, 8, 4 (padding)
VAL = [VAL[i] for i in range(len(VAL))]


class CountingLoader(Loader):
    """A Loader that counts the padding batches it handed out."""
    paddings = 0

    def next_batch(self):
        out = super().next_batch()
        CountingLoader.paddings += self.padding
        return out


def tiny_net(normalize, class_weights):
    net = Net(inputs=["data", "label"])
    net.add("conv1", L.Conv(3, 4, 3, pad=1, seed=0), "data")
    net.add("relu1", L.ReLU(), "conv1", "conv1")
    net.add("pool1", L.MaxPool(2), "conv1")
    net.add("conv2", L.Conv(4, 6, 3, pad=1, seed=1), "pool1")
    net.add("relu2", L.ReLU(), "conv2", "conv2")
    net.add("drop2", L.Dropout(0.3, seed=5), "conv2", "conv2")
    net.add("score_fr", L.Conv(6, 3, 1, seed=2), "conv2")
    net.add("upscore", L.Deconv(3, 3, 4, 2).freeze(), "score_fr")
    net.add("score", L.Crop(), ["upscore", "data"])
    net.add("loss", L.SoftmaxLoss(normalize=normalize, class_weights=class_weights),
            ["score", "label"])
    return net.astype(np.float64)


def trainer(comm, out, batch, normalize, class_weights, lr):
    net = tiny_net(normalize, class_weights)
    loader = CountingLoader(TRAIN, batch_size=batch, crop=(24, 24), mirror=True, seed=7,
                            dtype=np.float64)
    solver = train.SGD(net, lr=lr, momentum=0.9, weight_decay=5e-4)
    return train.Trainer(net, solver, loader, out, val_data=VAL, num_classes=3, iter_size=2,
                         loss_sample=0.7, sample_seed=3, val_interval=3, checkpoint_interval=3,
                         progress=False, comm=comm, bucket_mb=0.0005)


def max_diff(a, b):
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def curve(history):
    return [(r["iter"], k, v) for r in history for k, v in sorted(r.items())
            if k not in ("iter", "time", "lr")]


def curve_diff(a, b):
    if [x[:2] for x in a] != [x[:2] for x in b]:
        return float("inf")
    return max(abs(x[2] - y[2]) / max(1.0, abs(y[2])) for x, y in zip(a, b))


def equality(normalize, class_weights, lr, name=None):
    out = os.path.join(OUT, name or normalize)
    dist, ref_dir = os.path.join(out, "dist"), os.path.join(out, "ref")
    t = trainer(COMM, dist, 4, normalize, class_weights, lr)
    t.run(3, log_every=1)
    if RANK == 0:
        shutil.copy(os.path.join(dist, "checkpoint.npz"), os.path.join(out, "at3.npz"))
    COMM.Barrier()
    t = trainer(COMM, dist, 4, normalize, class_weights, lr)      # a fresh start: resume
    t.resume()
    t.run(6, log_every=1)
    mine = t.net.params(host=True)
    root = {k: COMM.bcast(v if RANK == 0 else None) for k, v in mine.items()}
    across = COMM.allreduce(max_diff(mine, root), op=MPI.MAX)     # rank 1's are rank 0's
    paddings = COMM.allreduce(CountingLoader.paddings)
    stats = dict(t.reducer.stats, buckets=len(t.reducer.buckets))
    if RANK != 0:
        return None
    ref = trainer(None, ref_dir, 8, normalize, class_weights, lr)
    ref.run(6, log_every=1)
    want = ref.net.params(host=True)
    again = trainer(None, os.path.join(out, "reshard"), 8, normalize, class_weights, lr)
    again.resume(os.path.join(out, "at3.npz"))                   # written by 2 ranks
    again.run(6, log_every=1)
    refused = ""
    try:
        trainer(None, os.path.join(out, "other"), 4, normalize, class_weights, lr).resume(
            os.path.join(out, "at3.npz"))
    except ValueError as e:
        refused = str(e)
    with open(os.path.join(dist, "log.jsonl")) as f:
        logged = [json.loads(line) for line in f]
    return {"param_diff": max_diff(mine, want), "across_ranks": across,
            "curve_diff": curve_diff(curve(logged), curve(ref.history)),
            "curve_len": len(curve(logged)),
            "reshard_diff": max_diff(again.net.params(host=True), want),
            "moved": max_diff(want, tiny_net(normalize, class_weights).params()),
            "refused": refused, "paddings": paddings, "stats": stats}


def split_validation():
    net = tiny_net("valid", None)
    both = train.evaluate(net, VAL, 3, comm=COMM)
    if RANK != 0:
        return None
    alone = train.evaluate(net, VAL, 3)
    return {"hist_equal": bool(np.array_equal(both["confusion"].hist, alone["confusion"].hist)),
            "pixels": int(alone["confusion"].hist.sum()),
            "loss_diff": abs(both["loss"] - alone["loss"]),
            "mean_iu_diff": abs(both["mean_iu"] - alone["mean_iu"])}


def collectives():
    comm = Comm(COMM)
    texts = comm.allgather_text("é" * RANK)              # utf-8, one empty
    ints = comm.allgather_int(10 + RANK)
    return {"texts": texts, "ints": ints.tolist()}


def naive_means():
    """The control: summing each rank's gradient of its own mean loss (seed 1, no share)
    is not the global batch's gradient when the ranks hold different numbers of pixels."""
    import minifcn.distributed as D
    share = D.loss_share

    def seeds_of_one(net, comm, padding=False):
        seeds, loss = share(net, comm, padding)
        return {k: (0.0 if padding else 1.0 / comm.size) for k in seeds}, loss
    D.loss_share = seeds_of_one
    try:
        got = equality("valid", [1.0, 2.0, 0.5], 0.2, "naive")  # on every rank
        return None if got is None else got["param_diff"]
    finally:
        D.loss_share = share


def on_cuda():
    """2 ranks on the cuda device (GPU rank % count; the simulator here) against one cpu
    process: gradients through host buffers, then reduced where they are (cuda_aware_mpi,
    forced: the simulator's device arrays are host memory, so any MPI can read them)."""
    from minifcn import distributed
    from minifcn.kernels.cuda import util
    util._SIM_BLOCKS = 1                 # as tests/test_cuda_net.py: ~3x faster in the simulator
    sys.setswitchinterval(1e-4)
    gpu = distributed.select_gpu(Comm(COMM))
    out = {"gpu": gpu, "simulator": bool(util.SIM)}
    data = [(img[:12, :12], lab[:12, :12]) for img, lab in TRAIN[:6]]
    finals = {}
    for name, comm, batch, device, aware in (("cpu", None, 2, "cpu", None),
                                             ("staged", COMM, 1, "cuda", False),
                                             ("aware", COMM, 1, "cuda", True)):
        if comm is None and RANK != 0:
            continue
        net = tiny_net("valid", None)
        net.layers["drop2"].p = 0.0             # cuda dropout masks are not the cpu's
        net.to(device)
        loader = Loader(data, batch_size=batch, crop=(8, 8), mirror=True, seed=7,
                        dtype=np.float64)
        t = train.Trainer(net, train.SGD(net, lr=0.2, momentum=0.9), loader,
                          os.path.join(OUT, "cuda_" + name), progress=False,
                          comm=comm, bucket_mb=0.0005, cuda_aware_mpi=aware)
        t.run(2)
        finals[name] = net.params(host=True)
        if comm is not None:
            grads = t.net.grads()
            out[name + "_on_device"] = all(type(g).__module__.startswith("numba")
                                           for g in grads.values())
    if RANK == 0:
        out["staged_diff"] = max_diff(finals["staged"], finals["cpu"])
        out["aware_diff"] = max_diff(finals["aware"], finals["cpu"])
    return out


if sys.argv[2:] == ["cuda"]:
    results = {"cuda": on_cuda()}
else:
    results = {"ranks": COMM.Get_size(), "collectives": collectives()}
    for normalize, weights, lr in (("valid", [1.0, 2.0, 0.5], 0.2), ("batch", None, 2e-4),
                                   ("none", None, 2e-5)):
        results[normalize] = equality(normalize, weights, lr)
    results["validation"] = split_validation()
    results["naive_means_diff"] = naive_means()
if RANK == 0:
    with open(os.path.join(OUT, sys.argv[2] if sys.argv[2:] else "results.json"), "w") as f:
        json.dump(results, f, indent=1)
