"""Data-parallel training (minifcn.distributed). In this process: sharded loaders read the
global batch, sharded random streams draw the global stream, each rank's share of the loss
sums to the global batch's gradient, buckets follow backward and start as it makes them.
Under `mpiexec -n 2` (tests/mpi_checks.py and the command line): 2 ranks x batch 4 end with
the weights of 1 process x batch 8 (float64, 1e-12; iter_size, dropout, loss sampling,
resume, reshard), validation split over ranks, cuda ranks (in Numba's simulator), a failing
rank bringing the others down, and the set-up mistakes refused in one line.

The mpiexec here is the mpich wheel's (the [mpi] extra that `make test` installs); these
tests skip only where mpi4py cannot be imported."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minifcn import distributed as D
from minifcn import layers as L
from minifcn.data import Loader, SyntheticShapes
from minifcn.net import Net

try:
    import mpi4py  # noqa: F401
    HAS_MPI, WHY = True, ""
except ImportError as e:
    HAS_MPI, WHY = False, f"mpi4py cannot be imported ({e}): pip install '.[mpi]'"
needs_mpi = pytest.mark.skipif(not HAS_MPI, reason=WHY)

HERE = Path(__file__).resolve().parent
# two ranks on a 2-core box: one thread each (the default, 2 each, would oversubscribe)
ENV = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")


class FakeComm:
    """One rank's view of a world whose other ranks' answers are given: allgather_int returns
    `counts` (checking ours), sum returns `totals` (recording what we sent)."""

    def __init__(self, rank, size, counts=None, totals=None):
        self.rank, self.size, self.counts, self.totals, self.sent = rank, size, counts, totals, []

    def allgather_int(self, n):
        assert n == self.counts[self.rank]
        return np.asarray(self.counts, np.int64)

    def sum(self, values):
        self.sent.append(np.asarray(values, np.float64))
        return self.totals if self.totals is not None else self.sent[-1]


# ----------------------------------------------------------------------------- in process
def test_sharded_loaders_read_the_global_batch():
    """Ranks 0 and 1 of 2 x batch 3 see the batches of one loader x batch 6, crops and flips
    included; where a short last batch leaves rank 1 nothing it gets a void stand-in."""
    ds = SyntheticShapes(8, seed=1, size=(9, 14), num_classes=3)
    kw = dict(crop=(7, 8), mirror=True, seed=4)
    one = Loader(ds, batch_size=6, **kw)
    ranks = [Loader(ds, batch_size=3, shard=(r, 2), **kw) for r in range(2)]
    assert len(one) == len(ranks[0]) == 2
    paddings = 0
    for _ in range(5):                               # 8 items: global batches 6, 2, 6, 2, 6
        x, y = one.next_batch()
        parts = [r.next_batch() for r in ranks]
        real = [p for p, r in zip(parts, ranks) if not r.padding]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in real]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in real]), y)
        if ranks[1].padding:
            paddings += 1
            assert (parts[1][1] == 255).all() and parts[1][0].shape == (1, 3, 7, 8)
        assert json.dumps(ranks[0].state_dict()) == json.dumps(ranks[1].state_dict()) == \
            json.dumps(one.state_dict())
    assert paddings == 2
    with pytest.raises(ValueError, match=r"shard must be \(rank, ranks\)"):
        Loader(ds, shard=(2, 2))


def test_sharded_stream_draws_the_global_stream():
    """Three ranks wanting 4, nothing (padding) and 5 numbers get what one generator gives
    for 9 in a row, in rank order; all three end in its state."""
    counts = [4, 0, 5]
    one = np.random.default_rng(11)
    want = one.random(9)
    got, states = [], []
    for r, n in enumerate(counts):
        s = D.ShardedStream(np.random.default_rng(11), FakeComm(r, 3, counts),
                            padding=lambda r=r: r == 1)
        u = s.random(n if n else 3)                  # the padding rank still gets numbers
        got.append(u if n else u[:0])
        states.append(s.bit_generator.state)
    np.testing.assert_array_equal(np.concatenate(got), want)
    assert all(st == one.bit_generator.state for st in states)
    seeds = [D.ShardedStream(np.random.default_rng(2), FakeComm(r, 3)).integers(2 ** 63)
             for r in range(3)]
    assert len(set(seeds)) == 3                      # the cuda dropout seed: one per rank
    with pytest.raises(ValueError, match="PCG64"):
        D.ShardedStream(np.random.Generator(np.random.MT19937(0)), FakeComm(0, 1))


def share_net(normalize, class_weights):
    net = Net(inputs=["data", "label"])
    net.add("conv", L.Conv(2, 3, 3, pad=1, seed=3, dtype=np.float64), "data")
    net.add("loss", L.SoftmaxLoss(normalize=normalize, class_weights=class_weights),
            ["conv", "label"])
    return net


@pytest.mark.parametrize("normalize,weights", [("valid", None), ("valid", [1.0, 3.0, 0.5]),
                                               ("batch", None), ("none", None)])
def test_loss_shares_sum_to_the_global_gradient(normalize, weights, rng):
    """Shards of 1 and 2 images (the second with few valid pixels): seeding each shard's
    backward with its share makes the summed gradient, and the combined loss, the whole
    batch's; seeding each with 1/N (a mean of the shards' means) does not."""
    x = rng.standard_normal((3, 2, 5, 5))
    y = rng.integers(0, 3, (3, 5, 5))
    y[1:, :, 1:] = 255
    whole = share_net(normalize, weights)
    loss = float(whole.forward(data=x, label=y))
    whole.backward(input_grads=False)
    shards = [slice(0, 1), slice(1, 3)]
    sent = []
    for s in shards:                                 # what each rank would send
        net = share_net(normalize, weights)
        net.forward(data=x[s], label=y[s])
        c = FakeComm(0, 2)
        D.loss_share(net, c)
        sent.append(c.sent[0])
    totals = sent[0] + sent[1]
    grad, naive, combined = 0, 0, None
    for r, s in enumerate(shards):
        net = share_net(normalize, weights)
        net.forward(data=x[s], label=y[s])
        seeds, combined = D.loss_share(net, FakeComm(r, 2, totals=totals))
        net.backward(seeds, input_grads=False, keep=True)        # a second one follows
        grad = grad + net.grads()["conv.weight"]
        net.backward({"loss": 0.5}, input_grads=False)
        naive = naive + net.grads()["conv.weight"]
    want = whole.grads()["conv.weight"]
    np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-14)
    assert abs(combined - loss) <= 1e-12 * abs(loss)
    if normalize != "none":
        assert not np.allclose(naive, want, rtol=1e-3)


def test_buckets_follow_backward_and_hold_each_gradient_once():
    from minifcn import models
    net = models.fcn8s_micro(3)
    cap = 2000
    buckets = D.plan_buckets(net, cap)
    order = [(n, p) for n in reversed(net.layers) for p in net.layers[n].params
             if net.layers[n].trainable(p)]
    assert [(e[0], e[1]) for b in buckets for e in b.entries] == order
    assert not any(n.startswith("upscore8") for b in buckets for n in b.layers)   # frozen
    assert len(buckets) > 3
    for b in buckets:
        assert b.nbytes <= cap or len(b.entries) == 1
        assert [e[2] for e in b.entries] == list(np.cumsum([0] + [e[3] for e in
                                                                  b.entries])[:-1])


def test_launcher_detection_and_a_missing_mpiexec(monkeypatch, tmp_path):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert D.launched() is None and D.world() is None
    monkeypatch.setenv("OMPI_COMM_WORLD_SIZE", "4")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "3")
    assert D.launched() == (4, 3, "OMPI_COMM_WORLD_SIZE")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(D.MPISetupError, match=r"no mpiexec.*pip install 'minifcn\[mpi\]'"):
        D.find_mpiexec()


@needs_mpi
def test_reducer_starts_each_bucket_when_backward_has_made_it(rng):
    """On a world of one rank (COMM_SELF): a bucket's Allreduce starts right after the
    backward of its last layer, before the layers below; after finish() the gradients are
    unchanged (a sum over one rank) and live in the bucket buffers."""
    from mpi4py import MPI
    from minifcn import models
    net = models.fcn8s_micro(3).astype(np.float64)
    x = rng.standard_normal((1, 3, 24, 24))
    y = rng.integers(0, 3, (1, 24, 24))
    net.forward(data=x, label=y)
    reducer = D.GradientReducer(net, D.Comm(MPI.COMM_SELF), bucket_mb=0.002)
    events, start = [], reducer._start

    def hook(name):
        events.append(("layer", name))
        reducer.hook(name)

    def recorded(b):
        events.append(("bucket", reducer.buckets.index(b)))
        start(b)
    reducer._start = recorded
    reducer.begin()
    net.backward(input_grads=False, hook=hook)
    want = {k: v.copy() for k, v in net.grads().items()}
    reducer.finish()
    started = [i for kind, i in events if kind == "bucket"]
    assert started == list(range(len(reducer.buckets))) and len(started) > 3
    for i, b in enumerate(reducer.buckets):
        at = events.index(("bucket", i))
        done = [n for kind, n in events[:at] if kind == "layer"]
        assert done[-1] == b.layers[-1] and set(b.layers) <= set(done)
    for k, v in net.grads().items():
        np.testing.assert_array_equal(v, want[k])
    b = reducer.buckets[0]
    name, p = b.entries[0][:2]
    assert np.shares_memory(net.layers[name].grads[p], b.buf)
    trainable = [v for n, layer in net.layers.items() for p, v in layer.params.items()
                 if layer.trainable(p)]
    assert reducer.stats["steps"] == 1
    assert reducer.stats["bytes"] == sum(v.nbytes for v in trainable)


# ----------------------------------------------------------------------------- under mpiexec
def mpiexec(n, *args, timeout=180, env=None):
    cmd = [D.find_mpiexec(), "-n", str(n)] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or ENV)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("mpi")
    p = mpiexec(2, sys.executable, HERE / "mpi_checks.py", out)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads((out / "results.json").read_text())


@needs_mpi
@pytest.mark.parametrize("normalize", ["valid", "batch", "none"])
def test_two_ranks_by_4_train_as_one_process_by_8(two_ranks, normalize):
    """float64, iter_size 2, dropout, loss sampling, crops, flips, short last batches
    (padding on rank 1), several buckets, and a resume at iteration 3: after 6 iterations
    both ranks hold the weights of one process with batch 8, and logged the same curve."""
    r = two_ranks[normalize]
    assert r["moved"] > 0.1                          # the weights did move
    assert r["param_diff"] < 1e-12 and r["across_ranks"] == 0.0
    assert r["curve_len"] >= 12 and r["curve_diff"] < 1e-12      # losses and validation
    assert r["paddings"] > 0 and r["stats"]["buckets"] > 1 and r["stats"]["steps"] == 3
    # the 2-rank checkpoint resumed by one process (batch 8) continues exactly: reshard
    assert r["reshard_diff"] < 1e-12
    assert "global batch of 8" in r["refused"] and "mpiexec -n 2" in r["refused"]


@needs_mpi
def test_what_the_two_ranks_agree_on(two_ranks):
    assert two_ranks["naive_means_diff"] > 1e-3      # a mean of per-rank means is not it
    v = two_ranks["validation"]                       # split over ranks, counts summed
    assert v["hist_equal"] and v["pixels"] > 0 and v["loss_diff"] < 1e-12
    assert two_ranks["collectives"] == {"texts": ["", "é"], "ints": [10, 11]}


@needs_mpi
def test_cuda_ranks_in_the_simulator(tmp_path):
    """Each rank on GPU rank % count; gradients through host buffers, or reduced where they
    are when the MPI is CUDA-aware (forced here); both equal one cpu process."""
    p = mpiexec(2, sys.executable, HERE / "mpi_checks.py", tmp_path, "cuda",
                env=dict(ENV, NUMBA_ENABLE_CUDASIM="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((tmp_path / "cuda").read_text())["cuda"]
    assert r["gpu"] == 0 and r["staged_on_device"] and r["aware_on_device"]
    assert r["staged_diff"] < 1e-10 and r["aware_diff"] < 1e-10


BASE = ["train", "--model", "fcn8s_micro", "--data", "synthetic", "--synthetic-size", "8",
        "--batch", "1", "--crop", "32", "32", "--no-progress"]
TRAIN = BASE + ["--iters", "2", "--val-interval", "2"]


@needs_mpi
def test_the_command_line_under_mpiexec(tmp_path):
    """Rank 0 alone prints and writes; a resume with another global batch, and a verb that
    does not split over ranks, are refused in one line."""
    cli = [sys.executable, "-m", "minifcn.cli"]
    p = mpiexec(2, *cli, *TRAIN, "--out", tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert sum("training done at iteration 2" in ln and "(2 ranks)" in ln for ln in lines) == 1
    assert sum(ln.startswith("pixel acc") for ln in lines) == 1
    log = [json.loads(ln) for ln in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in log] == [2, 2]        # a loss record and a validation record
    assert (tmp_path / "checkpoint.npz").is_file() and (tmp_path / "curves.png").is_file()
    p = mpiexec(3, *cli, *TRAIN, "--out", tmp_path, "--resume")
    assert p.returncode == 1 and p.stdout == ""
    err = p.stderr.strip().splitlines()
    assert len(err) == 1 and "global batch of 2" in err[0] and "mpiexec -n 2" in err[0], err
    p = mpiexec(2, *cli, "eval", "--model", "fcn8s_micro", "--data", "synthetic",
                "--synthetic-size", "8", "--weights", tmp_path / "checkpoint.npz")
    assert p.returncode == 0 and p.stdout.count("mean IU") == 1, p.stderr[-2000:]
    p = mpiexec(2, *cli, "rf", "fcn8s")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "does not split its work over ranks" in p.stderr


FAIL_ON_RANK_1 = """
import sys
from mpi4py import MPI
from minifcn import cli, data
next_batch = data.Loader.next_batch
def failing(self):
    if MPI.COMM_WORLD.Get_rank() == 1 and self._pos >= 4:
        raise RuntimeError("deliberate failure on rank 1")
    return next_batch(self)
data.Loader.next_batch = failing
sys.exit(cli.main(sys.argv[1:]))
"""


@needs_mpi
def test_a_rank_that_raises_brings_the_others_down(tmp_path):
    """Rank 1 raises at iteration 2 while rank 0 waits for it in an Allreduce: MPI_Abort ends
    both (within the timeout: no hang) and says which rank failed and why."""
    p = mpiexec(2, sys.executable, "-c", FAIL_ON_RANK_1, *BASE, "--iters", "6",
                "--out", tmp_path, "--checkpoint-interval", "1", timeout=120)
    assert p.returncode != 0
    assert "minifcn: rank 1 of 2 failed at iteration 2: RuntimeError: deliberate failure" \
        in p.stderr
    assert "MPI_Abort" in p.stderr
    from minifcn.train import load_checkpoint
    from minifcn import models
    info = load_checkpoint(tmp_path / "checkpoint.npz", models.fcn8s_micro(5))
    assert info["iter"] == 2                          # the last checkpoint is whole


@needs_mpi
@pytest.mark.parametrize("case", ["other MPI", "no mpi4py"])
def test_a_bad_mpi_set_up_is_one_line(tmp_path, case):
    """A launcher of another MPI (each process a world of one: N copies of one run), or no
    mpi4py: one line from the launcher's rank 0, nothing from the others, before any work."""
    env = {k: v for k, v in ENV.items() if not k.startswith(("PMI_", "OMPI_", "MV2_"))}
    code = "import sys\n"
    if case == "other MPI":
        env.update(OMPI_COMM_WORLD_SIZE="2")          # what Open MPI's mpirun sets
    else:
        env.update(PMI_SIZE="2")
        code += "sys.modules['mpi4py'] = None\n"     # as if it were not installed
    code += "from minifcn.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    for rank in ("0", "1"):
        env["OMPI_COMM_WORLD_RANK" if case == "other MPI" else "PMI_RANK"] = rank
        p = subprocess.run([sys.executable, "-c", code, *TRAIN, "--out", tmp_path],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 1 and p.stdout == ""
        err = p.stderr.strip().splitlines()
        if rank == "1":
            assert err == []
            continue
        assert len(err) == 1, err
        assert ("this one's MPI world has 1" in err[0] if case == "other MPI" else
                "mpi4py cannot be imported" in err[0] and "minifcn[mpi]" in err[0])
    assert not (tmp_path / "checkpoint.npz").exists()
