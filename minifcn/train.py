"""Solvers and the training loop: the reference's recipe, checkpoints, resume.

    solver = SGD(net, lr=1e-10, momentum=0.99, weight_decay=5e-4)     # voc-fcn32s/solver.prototxt
    trainer = Trainer(net, solver, loader, out_dir="runs/x", val_data=val, num_classes=21)
    trainer.run(iters=100000)

Caffe's conventions, which the reference FCNs were trained with:
  * per-parameter multipliers: each parameter's lr and decay are scaled by its layer's
    lr_mult / decay_mult (biases: 2x lr, no decay; frozen upsampling filters: lr_mult 0);
  * iter_size: gradients of several batches are summed, then divided by iter_size;
  * lr policies: fixed, step (lr * gamma^floor(it/stepsize)), poly (lr * (1 - it/max)^power).
Loss sampling (paper 3.4) keeps each pixel's loss term with probability p by marking the
others void, so the gradient is that of a random subset of the spatial loss terms.

On the cuda device (net.to("cuda")) the solver's buffers live on the GPU beside the
parameters and every update runs there; evaluation takes the argmax and counts the confusion
matrix there too, so only the loss and an n x n matrix come back. A checkpoint copies to the
host to be written and back to the net's device when read.

A checkpoint (.npz, written atomically, no pickle) holds the weights, the solver's buffers,
the iteration and every random generator's state (data order, crops, dropout, sampling), so
a resumed run ends with the same weights as an uninterrupted one.

Data-parallel (Trainer(..., comm=MPI.COMM_WORLD), `mpiexec -n N minifcn train`; see
minifcn/distributed.py): each rank reads its slice of every global batch (N x the loader's
batch), seeds its backward with its share of the global loss, and the gradients are summed
over ranks in buckets while backward runs; N ranks x batch b end with the weights of one
process with batch N*b. Rank 0 alone writes the log, checkpoints and curves; validation is
split over the ranks and the confusion matrices summed. A checkpoint records the ranks and
the batch: resuming needs the same global batch (then any number of ranks continues
exactly), and a different one is refused by name.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time

import numpy as np

from . import distributed
from . import layers as L
from . import functional as F
from .files import BadFileError, atomic_write_text, read_npz
from .metrics import ConfusionMatrix
from .net import save_npz

IGNORE = 255


# ----------------------------------------------------------------------------- solvers
class Solver:
    """Base: learning-rate policy, per-parameter multipliers, state for checkpoints."""

    def __init__(self, net, lr, weight_decay=5e-4, policy="fixed", gamma=0.1, stepsize=None,
                 power=0.9, max_iter=None):
        if policy not in ("fixed", "step", "poly"):
            raise ValueError(f"lr policy must be fixed, step or poly, got {policy!r}")
        if policy == "step" and not stepsize:
            raise ValueError("the step lr policy needs stepsize")
        if policy == "poly" and not max_iter:
            raise ValueError("the poly lr policy needs max_iter")
        self.net, self.base_lr, self.weight_decay = net, float(lr), float(weight_decay)
        self.policy, self.gamma, self.stepsize = policy, gamma, stepsize
        self.power, self.max_iter = power, max_iter
        self.iter = 0
        self.buffers: dict[str, dict[str, np.ndarray]] = {}   # buffer name -> param -> array

    def lr(self, it=None):
        it = self.iter if it is None else it
        if self.policy == "step":
            return self.base_lr * self.gamma ** (it // self.stepsize)
        if self.policy == "poly":
            return self.base_lr * max(0.0, 1 - it / self.max_iter) ** self.power
        return self.base_lr

    def _device(self, key):
        """The device of parameter "<layer>.<param>": where its buffers live and update."""
        return self.net.layers[key.rpartition(".")[0]].device

    def _buffer(self, kind, key, like):
        store = self.buffers.setdefault(kind, {})
        if key not in store:
            store[key] = F.zeros_like(like, device=self._device(key))
        return store[key]

    def step(self, grad_scale=1.0):
        """One update of every trainable parameter from its gradient (times grad_scale)."""
        self._apply_rest(self.lr(), grad_scale, done=())
        self.iter += 1

    @contextlib.contextmanager
    def during_backward(self, grad_scale=1.0):
        """Apply each gradient as the block's backward makes it, then drop it: the same update
        as backward then step(), but the gradients never all live at once (at FCN-8s's
        500x500 step they are 537 MB). A weight gradient over layers.GRAD_BLOCK_BYTES (fc6's
        411 MB, fc7's 67 MB) comes a block of output channels at a time: the same sums, but
        OpenBLAS may add a GEMM of fewer rows in another order, so those weights agree with
        step()'s to float rounding; every other one is bit for bit. On leaving, a parameter
        that got no gradient is updated from layer.grads as step() does, and the iteration
        counts; the applied gradients read as zeros afterwards. One backward pass only (not
        iter_size > 1 or a gradient sum over ranks, which need the whole gradients: use
        step()). If backward fails, the layers it had passed keep their update and the
        iteration does not count."""
        lr, applied = self.lr(), set()

        def sink_for(name, layer):
            def sink(p, g, accumulate, rows=None):
                if accumulate:       # before any update: nothing is half done
                    raise ValueError("Solver.during_backward takes one backward pass, not "
                                     "iter_size's sum of several (use Solver.step)")
                self._apply(name, layer, p, g, lr, grad_scale, rows)
                if (name, p) not in applied:    # host zeros: calloc, no page touched
                    applied.add((name, p))
                    layer.grads[p] = F.zeros_like(layer.params[p], device=layer.device)
            return sink

        layers = [(n, layer) for n, layer in self.net.layers.items() if layer.params]
        for name, layer in layers:
            layer.grad_sink = sink_for(name, layer)
        try:
            yield
        finally:
            for _, layer in layers:
                del layer.grad_sink
        self._apply_rest(lr, grad_scale, done=applied)
        self.iter += 1

    def _apply_rest(self, lr, grad_scale, done):
        """Update every trainable parameter not in `done` from layer.grads."""
        for name, layer in self.net.layers.items():
            for p in layer.params:
                if layer.lr_mult[p] != 0 and (name, p) not in done:
                    self._apply(name, layer, p, layer.grads[p], lr, grad_scale)

    def _apply(self, name, layer, p, g, lr, grad_scale, rows=None):
        """Update parameter p of layer `name` (rows of it, or all) from its gradient g."""
        if grad_scale != 1:
            g = F.scale(g, grad_scale, device=layer.device)
        self._update(f"{name}.{p}", layer.params[p], g, lr * layer.lr_mult[p],
                     self.weight_decay * layer.decay_mult[p], rows)

    def state_arrays(self):
        """The buffers as NumPy arrays (copied from the device), named for a checkpoint."""
        return {f"solver/{kind}/{key}": F.to_host(v, device=self._device(key))
                for kind, d in self.buffers.items() for key, v in d.items()}

    def load_state_arrays(self, arrays, iteration):
        self.iter = int(iteration)
        params = self.net.params()
        for k, v in arrays.items():
            _, kind, key = k.split("/", 2)
            if key not in params or params[key].shape != v.shape:
                raise ValueError(f"checkpoint solver buffer {key!r} {v.shape} does not fit the "
                                 f"net")
            self.buffers.setdefault(kind, {})[key] = F.asarray(
                v.astype(params[key].dtype), device=self._device(key))


class SGD(Solver):
    """Caffe's SGD with momentum: v = momentum v + lr (g + wd w); w -= v."""

    def __init__(self, net, lr, momentum=0.9, weight_decay=5e-4, **policy):
        super().__init__(net, lr, weight_decay, **policy)
        self.momentum = float(momentum)

    def _update(self, key, param, grad, lr, wd, rows=None):
        buf = self._buffer("momentum", key, param)
        if rows is not None:
            param, buf = param[rows], buf[rows]
        F.sgd_update(param, grad, buf, lr, self.momentum, wd, device=self._device(key))


class Adam(Solver):
    """Adam (Kingma & Ba) with L2 weight decay; the multipliers apply as for SGD."""

    def __init__(self, net, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 **policy):
        super().__init__(net, lr, weight_decay, **policy)
        self.beta1, self.beta2, self.eps = beta1, beta2, eps

    def _update(self, key, param, grad, lr, wd, rows=None):
        m = self._buffer("m", key, param)
        v = self._buffer("v", key, param)
        if rows is not None:
            param, m, v = param[rows], m[rows], v[rows]
        F.adam_update(param, grad, m, v, lr, self.beta1, self.beta2, self.eps, wd,
                      self.iter + 1, device=self._device(key))


def make_solver(net, optimizer="sgd", **kw):
    if optimizer == "sgd":
        return SGD(net, **kw)
    if optimizer == "adam":
        kw.pop("momentum", None)
        return Adam(net, **kw)
    raise ValueError(f"optimizer must be sgd or adam, got {optimizer!r}")


# ----------------------------------------------------------------------------- evaluation
def predict(net, x):
    """Class map (N, H, W) for preprocessed images x (N, 3, H, W): argmax of 'score'."""
    net.eval()
    scores = net.forward(data=x, until="score")
    return F.to_host(F.argmax(scores, device=net.device), device=net.device)


def evaluate(net, dataset, num_classes, mean=None, progress=False, comm=None):
    """The paper's four metrics over a dataset of (image, label), one image at a time, at
    its own size (FCNs take any size). Returns ConfusionMatrix.scores() plus 'loss' and
    'confusion' (the ConfusionMatrix). The argmax and the counts run on the net's device (on
    cuda the matrix stays there until the end: only the loss and n x n counts come back).
    With comm (N ranks), rank r scores images r, r+N, ... and the ranks sum their counts
    and losses: every rank gets the scores of the whole dataset."""
    from .data import VOC_MEAN_BGR, preprocess
    was_training = next(iter(net.layers.values())).training if net.layers else False
    net.eval()
    cm = ConfusionMatrix(num_classes)
    dev = net.device
    hist = F.asarray(cm.hist, device=dev)     # on the host devices: cm.hist itself
    losses = []
    dtype = next((v.dtype for v in net.params().values()), np.float32)   # images in the net's
    comm = distributed.wrap(comm)
    items = range(len(dataset)) if comm is None else range(comm.rank, len(dataset), comm.size)
    if progress and (comm is None or comm.rank == 0):
        from tqdm import tqdm
        items = tqdm(items, desc="eval", leave=False)
    for i in items:
        img, label = dataset[i]
        x = preprocess(img, VOC_MEAN_BGR if mean is None else mean)[None].astype(dtype)
        y = np.asarray(label, dtype=np.int32)[None]
        if "label" in net.inputs:
            losses.append(float(net.forward(data=x, label=y)))
            scores, gt = net.blobs["score"], net.blobs["label"]    # the label: on the device
        else:
            scores, gt = net.forward(data=x, until="score"), y
        pred = F.argmax(scores, device=dev)
        if tuple(pred.shape) != y.shape:
            raise ValueError(f"evaluate: image {i}: scores {tuple(scores.shape)} do not match "
                             f"its label {y.shape[1:]}")
        F.confusion_update(hist, gt, pred, num_classes, device=dev)
    cm.hist[...] = F.to_host(hist, device=dev)
    net.train(was_training)
    loss_sum, n_losses = sum(losses), len(losses)
    if comm is not None:                 # the n x n counts and the losses of every rank
        comm.sum_(cm.hist)
        loss_sum, n_losses = comm.sum([loss_sum, n_losses])
    out = cm.scores()
    out["loss"] = float(loss_sum / n_losses) if n_losses else float("nan")
    out["confusion"] = cm
    return out


# ----------------------------------------------------------------------------- checkpoints
def _rng_states(net, extra):
    states = {name: layer.rng.bit_generator.state for name, layer in net.layers.items()
              if isinstance(layer, L.Dropout)}
    states.update(extra)
    return states


def model_info(name, num_classes, class_names=None, mean=None):
    """What a training checkpoint records of its model (save_checkpoint's `model`; read back
    by describe), with the preprocessing the trainer applies: a mean subtracted in BGR order,
    no scaling. Class names are kept only when there is one per class."""
    from .data import VOC_MEAN_BGR
    names = list(class_names) if class_names is not None else []
    return {"name": name, "num_classes": int(num_classes),
            **({"class_names": names} if len(names) == num_classes else {}),
            "preprocess": {"mean": [float(v) for v in (VOC_MEAN_BGR if mean is None else mean)],
                           "channels": "BGR", "scale": 1.0}}


def save_checkpoint(path, net, solver, loader=None, sample_rng=None, meta=None, model=None):
    """Weights, solver buffers, iteration and generator states in one .npz (atomic). model:
    what the net is ({"name", "num_classes", "class_names", "preprocess"}; see describe), so
    eval, predict and minifcn.load need not be told again."""
    info = {"iter": solver.iter, "solver": type(solver).__name__,
            "rng": _rng_states(net, {"sample": sample_rng.bit_generator.state}
                               if sample_rng is not None else {}),
            "loader": loader.state_dict() if loader is not None else None,
            "meta": meta or {}, "model": model or {}}
    arrays = {f"param/{k}": v for k, v in net.params(host=True).items()}
    arrays.update(solver.state_arrays())
    arrays["info"] = np.array(json.dumps(info))        # a plain string: no pickle needed
    save_npz(path, arrays)


def _parse_info(path, raw):
    """The 'info' entry as the dict save_checkpoint wrote; anything else is refused by name."""
    def bad(why):
        return BadFileError(f"{path}: the checkpoint's 'info' entry {why}")
    if raw.dtype.kind != "U" or raw.ndim != 0:
        raise bad(f"is a {raw.dtype} array of shape {raw.shape}, not the JSON text minifcn "
                  f"writes")
    try:
        info = json.loads(str(raw))
    except ValueError as e:
        raise bad(f"is not JSON ({e})") from None
    if not isinstance(info, dict):
        raise bad(f"is a JSON {type(info).__name__}, not the object minifcn writes")
    for key, kind in (("iter", int), ("solver", str), ("rng", dict)):
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            raise bad(f"has no {key!r} ({kind.__name__}): not written by minifcn")
    if info["iter"] < 0:
        raise bad(f"says iteration {info['iter']}")
    for key in ("loader", "meta", "model"):
        if info.get(key) is not None and not isinstance(info[key], dict):
            raise bad(f"has a {key!r} that is a {type(info[key]).__name__}, not an object")
    info["model"] = _check_model(bad, info.get("model") or {})
    return info


def _check_model(bad, m):
    """The checkpoint's description of its model, each field checked (all are optional)."""
    def need(ok, key):
        if key in m and not ok(m[key]):
            raise bad(f"has a bad model {key!r}: {m[key]!r:.80}")
    need(lambda v: isinstance(v, str) and v, "name")
    need(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "num_classes")
    need(lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v)
         and len(v) == m.get("num_classes", len(v)), "class_names")
    pre = m.get("preprocess")
    need(lambda v: isinstance(v, dict) and v.get("channels") in ("BGR", "RGB")
         and isinstance(v.get("mean"), list) and len(v["mean"]) == 3
         and all(isinstance(x, (int, float)) and math.isfinite(x) for x in v["mean"] +
                 [v.get("scale", 1.0)]), "preprocess")
    return {**m, **({"preprocess": dict(pre)} if pre else {})}


def describe(path):
    """What a checkpoint says its model is: {"name", "num_classes", "class_names",
    "preprocess": {"mean": [3 numbers, in the channel order], "channels": "BGR", "scale":
    1.0}} (each key only if recorded); {} for plain weights, .caffemodel or .pth. Only the
    'info' entry is read (and checked)."""
    from .weights import is_checkpoint, weights_format
    if weights_format(path) != "npz" or not is_checkpoint(path):
        return {}
    try:
        with np.load(path, allow_pickle=False) as f:
            raw = f["info"]
    except Exception:                   # noqa: BLE001 -- read_npz names what is wrong
        raw = read_npz(path, "checkpoint")["info"]
    return _parse_info(path, raw)["model"]


def load_checkpoint(path, net, solver=None, loader=None, sample_rng=None, check=None):
    """Restore what save_checkpoint wrote; returns its info dict. check(info) may refuse
    the checkpoint (raise) before anything is restored. A damaged file, non-finite weights or
    an 'info' entry that is not what minifcn writes is refused (BadFileError) by name."""
    arrays = read_npz(path, "checkpoint")
    if "info" not in arrays:
        raise ValueError(f"{path} is not a minifcn checkpoint (no 'info' entry); for plain "
                         f"weights use --weights")
    info = _parse_info(path, arrays.pop("info"))
    if check is not None:
        check(info)
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    own = net.params()
    diff = sorted(set(own) ^ set(params)) + [k for k in own if k in params and
                                             own[k].shape != params[k].shape]
    if diff:
        raise ValueError(f"checkpoint {path} does not fit this net: {diff[:6]}")
    for k, v in params.items():
        net.set_param(k, v)
    try:
        for name, state in info["rng"].items():
            if name in net.layers:
                net.layers[name].rng.bit_generator.state = state
        if sample_rng is not None and "sample" in info["rng"]:
            sample_rng.bit_generator.state = info["rng"]["sample"]
        if solver is not None:
            solver.load_state_arrays({k: v for k, v in arrays.items()
                                      if k.startswith("solver/")}, info["iter"])
        if loader is not None and info.get("loader"):
            loader.load_state_dict(info["loader"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise BadFileError(f"{path}: the checkpoint's training state cannot be restored "
                           f"({type(e).__name__}: {e})") from None
    return info


# ----------------------------------------------------------------------------- the loop
def total_loss(net):
    """The sum of the loss layers' outputs of the last forward pass (a net may have several:
    SIFT Flow's semantic and geometric heads)."""
    return float(sum(float(net.blobs[net.tops[n][0]]) for n, layer in net.layers.items()
                     if layer.is_loss))



class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class Trainer:
    """Iteration-based training with periodic validation, a JSON-lines log, curves, and
    checkpoints. out_dir gets: log.jsonl, curves.png, checkpoint.npz (latest good one)."""

    def __init__(self, net, solver, loader, out_dir, val_data=None, num_classes=None,
                 iter_size=1, loss_sample=None, sample_seed=0, val_interval=None,
                 checkpoint_interval=None, progress=True, comm=None, bucket_mb=25.0,
                 overlap=True, cuda_aware_mpi=None, model_info=None):
        self.net, self.solver, self.loader = net, solver, loader
        self.model_info = model_info or {}     # what the checkpoint says the model is
        self.out_dir, self.val_data, self.num_classes = out_dir, val_data, num_classes
        self.iter_size, self.loss_sample = int(iter_size), loss_sample
        if self.iter_size < 1:
            raise ValueError(f"iter_size must be >= 1, got {iter_size}")
        if loss_sample is not None and not 0 < loss_sample <= 1:
            raise ValueError(f"loss_sample must be in (0, 1], got {loss_sample}")
        self.sample_rng = np.random.default_rng(sample_seed)
        self.val_interval, self.checkpoint_interval = val_interval, checkpoint_interval
        self.progress = progress
        self.checkpoint_path = os.path.join(out_dir, "checkpoint.npz")
        self.log_path = os.path.join(out_dir, "log.jsonl")
        self.history: list[dict] = []
        self.last_val = None                 # (iteration, evaluate()'s scores)
        self.comm, self.reducer, self._together = distributed.wrap(comm), None, False
        self.is_root = self.comm is None or self.comm.rank == 0     # writes the files
        if self.comm is not None:
            self._shard(bucket_mb, overlap, cuda_aware_mpi)
        if self.is_root:
            os.makedirs(out_dir, exist_ok=True)

    def _shard(self, bucket_mb, overlap, cuda_aware_mpi):
        """Data parallel over self.comm: this rank's slice of each global batch, sharded
        random streams (so dropout and loss sampling draw what one process would), and the
        gradients summed in buckets. No collective here (see distributed.agreed)."""
        comm, loader = self.comm, self.loader
        if not hasattr(loader, "set_shard"):
            raise ValueError(f"distributed training needs a loader that reads a shard of each "
                             f"global batch (minifcn.data.Loader), got {type(loader).__name__}")
        if loader.shard not in ((0, 1), (comm.rank, comm.size)):
            raise ValueError(f"the loader reads shard {loader.shard}, but this is rank "
                             f"{comm.rank} of {comm.size}")
        loader.set_shard(comm.rank, comm.size)
        distributed.check_losses(self.net)

        def padding():
            return loader.padding
        for layer in self.net.layers.values():
            if isinstance(layer, L.Dropout):
                layer.rng = distributed.ShardedStream(_plain(layer.rng), comm, padding)
        self.sample_rng = distributed.ShardedStream(_plain(self.sample_rng), comm, padding)
        self.reducer = distributed.GradientReducer(self.net, comm, bucket_mb, overlap,
                                                   cuda_aware_mpi)

    def _batch_meta(self):
        ranks = 1 if self.comm is None else self.comm.size
        batch = getattr(self.loader, "batch_size", None)
        return {"ranks": ranks, "batch": batch,
                "global_batch": None if batch is None else ranks * batch}

    def _check_batch(self, path):
        def check(info):
            was, now = info.get("meta") or {}, self._batch_meta()
            if was.get("global_batch") in (None, now["global_batch"]) or \
                    now["global_batch"] is None:
                return
            raise ValueError(
                f"checkpoint {path} was written by {was['ranks']} rank(s) x batch "
                f"{was['batch']} (a global batch of {was['global_batch']}); this run is "
                f"{now['ranks']} x {now['batch']} = {now['global_batch']}. Resume with ranks x "
                f"batch = {was['global_batch']} (e.g. mpiexec -n {was['ranks']} ... --batch "
                f"{was['batch']}): any number of ranks then continues exactly")
        return check

    def resume(self, path=None):
        path = path or self.checkpoint_path
        info = load_checkpoint(path, self.net, self.solver, self.loader, self.sample_rng,
                               check=self._check_batch(path))
        self._together = False               # the ranks check again that they agree
        if self.is_root and os.path.exists(self.log_path):   # keep the curve, up to here
            with open(self.log_path) as f:
                self.history = [r for r in map(json.loads, f) if r["iter"] <= info["iter"]]
            atomic_write_text(self.log_path, "".join(json.dumps(r) + "\n" for r in self.history))
        return info

    def _sample(self, labels):
        """Loss sampling: each valid pixel's loss term survives with probability p."""
        if self.loss_sample is None or self.loss_sample == 1:
            return labels
        drop = self.sample_rng.random(labels.shape) >= self.loss_sample
        return np.where(drop, IGNORE, labels).astype(labels.dtype)

    def step(self):
        """One solver iteration (iter_size forward/backward passes); returns the mean loss
        (with comm: of the global batch, the same on every rank)."""
        if self.comm is not None and not self._together:
            self._start_together()
        self.net.train()
        # One pass on one process: each gradient is applied as backward makes it and then
        # dropped (Solver.during_backward; the same weights, a lower peak of memory).
        at_once = self.iter_size == 1 and self.comm is None
        losses = []
        for k in range(self.iter_size):
            batch = self.loader.next_batch()
            if isinstance(batch, dict):    # named tops (minifcn.datasets): labels are ints
                inputs = {t: self._sample(v) if v.dtype.kind in "iu" else v
                          for t, v in batch.items()}
            else:
                inputs = {"data": batch[0], "label": self._sample(batch[1])}
            # blobs go once read, but what the losses and loss_share read back (memory)
            self.net.forward(keep=[b for n, layer in self.net.layers.items() if layer.is_loss
                                   for b in self.net.bottoms[n] + self.net.tops[n]], **inputs)
            loss = total_loss(self.net)
            seeds = hook = None
            if self.comm is not None:        # this rank's share of the global batch's loss
                seeds, loss = distributed.loss_share(self.net, self.comm,
                                                     getattr(self.loader, "padding", False))
                if k == self.iter_size - 1:  # the gradients are final: sum them as they come
                    self.reducer.begin()
                    hook = self.reducer.hook
            losses.append(float(loss))
            self._check_finite(losses[-1])   # before any update
            with self.solver.during_backward() if at_once else contextlib.nullcontext():
                self.net.backward(seeds, input_grads=False, accumulate=k > 0, hook=hook)
        if self.reducer is not None:
            self.reducer.finish()
        if not at_once:
            self.solver.step(grad_scale=1.0 / self.iter_size)
        return float(np.mean(losses))

    def _check_finite(self, loss):
        if not math.isfinite(loss):
            raise TrainingDiverged(
                f"the loss became {loss} at iteration {self.solver.iter} (lr "
                f"{self.solver.lr():g}); the last good checkpoint is kept at "
                f"{self.checkpoint_path}. Lower the learning rate, or mind the loss "
                f"normalisation: 'batch'/'none' sum over pixels and want a tiny lr (the "
                f"reference uses 1e-10 with momentum 0.99)")

    def validate(self):
        """Scores on val_data (a progress bar while it runs); kept as self.last_val (with
        its iteration), so a caller that wants the final scores need not evaluate again."""
        scores = evaluate(self.net, self.val_data, self.num_classes, comm=self.comm,
                          progress=self.progress and self.is_root)
        self.last_val = (self.solver.iter, scores)
        return {k: scores[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "loss")}

    def _log(self, record):
        self.history.append(record)
        if self.is_root:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def checkpoint(self):
        # Every rank's generators and loader are in the same state (ShardedStream), so rank
        # 0's checkpoint is every rank's.
        if self.is_root:
            save_checkpoint(self.checkpoint_path, self.net, self.solver, self.loader,
                            self.sample_rng, meta=self._batch_meta(), model=self.model_info)

    def _start_together(self):
        """Every rank starts from rank 0's weights, at one iteration and global batch."""
        self._together = True
        distributed.broadcast_params(self.net, self.comm)
        said = self.comm.allgather_text(f"iteration {self.solver.iter}, global batch "
                                        f"{self.loader.global_batch}")
        if len(set(said)) > 1:
            raise ValueError("the ranks are out of step: " + "; ".join(
                f"rank {r} at {s}" for r, s in enumerate(said)))

    def _on_sigint(self, signum, frame):
        if self._stop:                       # a second Ctrl-C: stop at once, save nothing
            raise KeyboardInterrupt
        self._stop = True
        from tqdm import tqdm
        tqdm.write("interrupted: finishing this iteration, then saving a checkpoint "
                   "(Ctrl-C again to quit without saving)")

    def run(self, iters, max_seconds=None, log_every=10):
        """Train until solver.iter == iters (or max_seconds of training pass). Ctrl-C lets
        the current iteration finish, saves a checkpoint and returns, so that --resume
        continues exactly; a NaN loss raises TrainingDiverged and keeps the last good
        checkpoint. Returns 'done', 'time' or 'interrupted'. With comm, the ranks stop
        together (Ctrl-C or time on any rank), and a rank that raises brings every rank down
        (MPI_Abort) rather than leave them waiting for it."""
        from tqdm import tqdm
        if self.comm is not None and not self._together:
            self._start_together()           # outside the abort below: all ranks agree
        start, status, self._stop = time.perf_counter(), "done", False
        bar = tqdm(total=iters, initial=self.solver.iter, disable=not (self.progress and
                                                                       self.is_root),
                   desc="train", dynamic_ncols=True, smoothing=0)   # ETA: all steps so far
        recent, last_iu = [], None
        try:
            old_handler = signal.signal(signal.SIGINT, self._on_sigint)
        except ValueError:                   # not the main thread: no handler to install
            old_handler = None
        try:
            while self.solver.iter < iters:
                loss = self.step()
                recent.append(loss)
                it = self.solver.iter
                if it % log_every == 0 or it == iters:
                    self._log({"iter": it, "loss": float(np.mean(recent)),
                               "lr": self.solver.lr(it - 1),
                               "time": round(time.perf_counter() - start, 2)})
                    recent = []
                if self.val_data is not None and self.val_interval and (
                        it % self.val_interval == 0 or it == iters):
                    val = self.validate()
                    last_iu = val["mean_iu"]
                    self._log({"iter": it, **{f"val_{k}": v for k, v in val.items()}})
                if self.checkpoint_interval and it % self.checkpoint_interval == 0:
                    self.checkpoint()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.4f}", **({"mIU": f"{last_iu:.3f}"}
                                                        if last_iu is not None else {}))
                stop = [self._stop, max_seconds is not None and
                        time.perf_counter() - start > max_seconds]
                if self.comm is not None:    # every rank stops at the same iteration
                    stop = self.comm.sum(stop) > 0
                if stop[0] or stop[1]:
                    status = "interrupted" if stop[0] else "time"
                    break
            self.checkpoint()
        except TrainingDiverged:             # every rank saw the same loss: all stop here
            raise
        except BaseException as e:
            if self.comm is not None:
                distributed.abort(self.comm, e, f"at iteration {self.solver.iter}")
            raise
        finally:
            bar.close()
            if old_handler is not None:
                signal.signal(signal.SIGINT, old_handler)
        if self.history and self.is_root:
            from .viz import save_curves
            save_curves(self.history, os.path.join(self.out_dir, "curves.png"))
        return status


def _plain(rng):
    """The generator under a ShardedStream (a trainer made again on the same net)."""
    return rng.gen if isinstance(rng, distributed.ShardedStream) else rng
