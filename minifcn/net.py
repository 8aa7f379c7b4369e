"""Net: a DAG of named layers over named blobs, with explicit forward and backward passes.

    net = Net(inputs=["data", "label"])
    net.add("conv1", Conv(3, 16, 3, pad=1), "data")          # top defaults to the layer name
    net.add("relu1", ReLU(), "conv1", "conv1")               # in place, as in Caffe
    ...
    out = net.forward(data=x, label=y)       # the output blobs (a dict if there are several)
    dx = net.backward()                      # loss layers are seeded with 1; returns d(data)

Layers run in the order they were added, which is a topological order by construction: a
bottom must exist (a net input or an earlier top) when its consumer is added. A blob read by
several layers receives the sum of their gradients. Layers whose top reuses their bottom's
name (ReLU, Dropout, Scale) replace the blob in place, as Caffe's in-place layers do.

Devices: ``net.to("cuda")`` copies every parameter and gradient to the GPU (``to("cpu")``
brings them back). Then forward copies its host inputs over once, every blob stays on the
device, backward makes its gradients there, and a solver updates the parameters there; what
comes back to the host is what the user asks for: the loss (a float), ``net.params(host=True)``,
``functional.to_host(blob, device="cuda")``. The copies are functional ops (asarray, to_host),
so on the host devices they are no-ops.
"""
from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from .files import atomic_write, read_npz
from . import functional as F
from .kernels import check_device


class Net:
    def __init__(self, inputs=("data",), name="net"):
        self.name = name
        self.inputs = list(inputs)
        self.layers: "OrderedDict[str, object]" = OrderedDict()
        self.bottoms: dict[str, list[str]] = {}
        self.bottom_sources: dict[str, list[str | None]] = {}   # producer of each bottom read
        self.tops: dict[str, list[str]] = {}
        self.producer: dict[str, str | None] = {b: None for b in self.inputs}
        self.blobs: dict[str, object] = {}
        self.timings: dict[str, list[float]] = {}    # layer -> [forward s, backward s] of last pass
        self._consumers: dict[str, list[str]] = {b: [] for b in self.inputs}
        self.outputs: list[str] = []     # blobs no layer reads: what forward returns
        self.device = None               # set by to(); None: the current default device
        self.released = False            # did a backward drop what another one would need?

    # ------------------------------------------------------------------ building
    def add(self, name, layer, bottoms, tops=None):
        """Add `layer` reading `bottoms` (a name or a list) and writing `tops` (default: the
        layer's name). Returns the top's name (or list of names), for chaining."""
        bottoms = [bottoms] if isinstance(bottoms, str) else list(bottoms)
        tops = [name] if tops is None else ([tops] if isinstance(tops, str) else list(tops))
        if name in self.layers:
            raise ValueError(f"{self.name}: a layer named {name!r} already exists")
        for b in bottoms:
            if b not in self.producer:
                raise ValueError(f"{self.name}: layer {name!r} reads blob {b!r}, which no "
                                 f"earlier layer produces and is not an input {self.inputs}")
        if layer.n_bottoms is not None and len(bottoms) != layer.n_bottoms:
            raise ValueError(f"{self.name}: layer {name!r} ({type(layer).__name__}) takes "
                             f"{layer.n_bottoms} bottom(s), got {bottoms}")
        for t in tops:
            if t in self.producer and not (t in bottoms and layer.inplace_ok):
                raise ValueError(f"{self.name}: layer {name!r} writes blob {t!r}, which already "
                                 f"exists (only ReLU/Dropout/Scale may work in place)")
            if t in bottoms and self._consumers[t]:
                raise ValueError(f"{self.name}: layer {name!r} would change blob {t!r} in place "
                                 f"after {self._consumers[t]} read it; give it a new top")
        if self.device is not None:
            layer.to(self.device)            # a layer joining a net moved to a device follows
        self.layers[name] = layer
        self.bottoms[name], self.tops[name] = bottoms, tops
        self.bottom_sources[name] = [self.producer[b] for b in bottoms]
        for b in bottoms:
            self._consumers[b].append(name)
        for t in tops:
            self.producer[t] = name
            self._consumers[t] = []          # readers of this (new) version of the blob
        self._on_change()
        return tops[0] if len(tops) == 1 else tops

    def _on_change(self):
        """Recompute what derives from the graph: crop offsets and the output blobs."""
        from .coordmap import derive_crop_offsets  # late import: coordmap reads Net graphs
        derive_crop_offsets(self)
        read = {(b, src) for n in self.layers
                for b, src in zip(self.bottoms[n], self.bottom_sources[n])}
        self.outputs = [t for n in self.layers for t in self.tops[n]
                        if self.producer[t] == n and (t, n) not in read]

    # ------------------------------------------------------------------ running
    def forward(self, *args, until=None, keep=True, **inputs):
        """Run the layers in order. Inputs by keyword (or positionally in the order of
        net.inputs). Returns the output blob, or a dict {name: array} when there are several.
        until="score" stops once that blob is made and returns it (inputs only later layers
        read, a training net's label, may be left out). keep=False drops each blob after its
        last reader (backward needs only what layers saved) but inputs, outputs, until and
        keep=[names]."""
        inputs.update(zip(self.inputs, args))
        names = list(self.layers)
        if until is not None:
            if until not in self.producer:
                raise ValueError(f"{self.name}: forward(until={until!r}): no such blob")
            names = names[:names.index(self.producer[until]) + 1] if self.producer[until] else []
        read = {b for n in names for b in self.bottoms[n]}
        missing = [b for b in self.inputs if b not in inputs and (b in read or until == b)]
        unknown = [b for b in inputs if b not in self.inputs]
        if missing or unknown:
            raise ValueError(f"{self.name}: forward needs inputs {self.inputs}; missing "
                             f"{missing}, unknown {unknown}")
        last = {} if keep is True else {b: n for n in names for b in self.bottoms[n]}
        kept = self._kept(keep) | {until} if last else ()
        # host inputs go to the device, once
        blobs = self.blobs = {k: F.asarray(v, device=self.device) for k, v in inputs.items()}
        self.released = False            # what backward needs is there again
        for name in names:
            layer = self.layers[name]
            t0 = time.perf_counter()
            bottoms = [blobs[b] for b in self.bottoms[name]]
            try:
                tops = layer.forward(*bottoms)
            except ValueError as e:
                shapes = ", ".join(f"{b} {_shape(blobs[b])}" for b in self.bottoms[name])
                raise ValueError(f"{self.name}: layer {name!r} ({type(layer).__name__}) on "
                                 f"bottoms [{shapes}]: {e}") from None
            blobs.update(zip(self.tops[name], tops))
            for b in self.bottoms[name]:      # a multi-top layer's tops stay (zeros are made
                # like them for a top backward brings no gradient)
                if last.get(b) == name and b not in kept and len(self.tops[self.producer[b]]) < 2:
                    blobs.pop(b, None)
            self.timings[name] = [time.perf_counter() - t0, 0.0]
        if until is not None:
            return blobs[until]
        outs = self.outputs
        return blobs[outs[0]] if len(outs) == 1 else {o: blobs[o] for o in outs}

    def _kept(self, keep):
        """keep=[names] (or one name) as a set, each checked, with the inputs and outputs."""
        names = {keep} if isinstance(keep, str) else set(keep or ())
        if names - set(self.producer):
            raise ValueError(f"{self.name}: keep: no blob {sorted(names - set(self.producer))}")
        return names | set(self.inputs + self.outputs)

    def _needs_grad(self, input_grads):
        """Which blobs need a gradient: those from which a trainable parameter or a wanted
        input gradient can be reached going backwards. Everything else is skipped."""
        need = {b: input_grads for b in self.inputs}
        for name, layer in self.layers.items():
            flows = any(need.get(b, False) for b in self.bottoms[name])
            has_params = any(layer.trainable(p) for p in layer.params)
            for t in self.tops[name]:
                need[t] = flows or has_params
        return need

    def backward(self, grads=None, input_grads=True, accumulate=False, hook=None, keep=False):
        """Backpropagate through every layer in reverse order.

        grads: {blob: dout} for output blobs; loss layers' outputs are seeded with 1.0 unless
        given. input_grads=False skips the gradient of the net inputs (training never uses
        it). accumulate=True adds parameter gradients to those already held (iter_size).
        hook(layer_name) is called once a layer's gradients are made (data-parallel training
        starts summing them over ranks then, while backward goes on).
        Memory: as backward passes a layer it drops what the layer saved and the blobs no
        earlier layer reads (inputs, outputs stay); keep=True keeps all, keep=[names] those.
        Returns the gradient of the float inputs: one array, or a dict when there are several.
        """
        diffs = {self.tops[n][0]: 1.0 for n, layer in self.layers.items() if layer.is_loss}
        for blob, d in (grads or {}).items():
            if blob not in self.producer:
                raise ValueError(f"{self.name}: backward got a gradient for unknown blob {blob!r}")
            diffs[blob] = d if np.ndim(d) == 0 else F.asarray(d, device=self.device)
        if not diffs:
            raise ValueError(f"{self.name}: nothing to backpropagate: the net has no loss layer, "
                             f"so pass grads={{blob: dout}} for its outputs {self.outputs}")
        if self.released:
            raise ValueError(f"{self.name}: a second backward needs forward again (or keep=True)")
        need = self._needs_grad(input_grads)
        kept = set(self.blobs) if keep is True else self._kept(keep)
        for name, layer in reversed(self.layers.items()):
            self._backward_layer(name, layer, diffs, need, accumulate, hook)
            if keep is not True:           # nothing before this layer reads these: drop them
                layer.release()
                for t in set(self.tops[name]) - set(self.bottoms[name]) - kept:
                    self.blobs.pop(t, None)
        self.released = keep is not True
        dinputs = {b: diffs.get(b) for b in self.inputs if input_grads and b in diffs}
        return next(iter(dinputs.values())) if len(dinputs) == 1 else dinputs or None

    def _backward_layer(self, name, layer, diffs, need, accumulate, hook):
        dtops = [diffs.pop(t, None) for t in self.tops[name]]
        wanted = [need[b] for b in self.bottoms[name]]
        if all(d is None for d in dtops) or not any(wanted) and not any(
                layer.trainable(p) for p in layer.params):
            return                                # nothing flows back, or nobody wants it
        dtops = [F.zeros_like(self.blobs[t], device=layer.device) if d is None else d
                 for t, d in zip(self.tops[name], dtops)]
        t0 = time.perf_counter()
        for b, d, w in zip(self.bottoms[name], layer.backward(dtops, wanted, accumulate),
                           wanted):
            if d is not None and w:
                diffs[b] = d if b not in diffs else F.add(diffs[b], d, device=layer.device)
        self.timings.setdefault(name, [0.0, 0.0])[1] = time.perf_counter() - t0
        if hook is not None:
            hook(name)

    # ------------------------------------------------------------------ modes, parameters
    def train(self, mode=True):
        for layer in self.layers.values():
            layer.training = mode
        return self

    def eval(self):
        return self.train(False)

    def params(self, host=False):
        """OrderedDict "<layer>.<param>" -> array, in layer order: the arrays the layers hold
        (device arrays on cuda), or with host=True NumPy arrays (copies from a device)."""
        return OrderedDict((f"{n}.{p}", F.to_host(v, device=layer.device) if host else v)
                           for n, layer in self.layers.items() for p, v in layer.params.items())

    def grads(self, host=False):
        """As params(), for the gradients."""
        return OrderedDict((f"{n}.{p}", F.to_host(g, device=layer.device) if host else g)
                           for n, layer in self.layers.items() for p, g in layer.grads.items())

    def param_specs(self):
        """OrderedDict "<layer>.<param>" -> (lr_mult, decay_mult)."""
        return OrderedDict((f"{n}.{p}", (layer.lr_mult[p], layer.decay_mult[p]))
                           for n, layer in self.layers.items() for p in layer.params)

    def set_param(self, key, value):
        """Replace a parameter (same shape; cast to its dtype)."""
        layer_name, _, p = key.rpartition(".")
        layer = self.layers[layer_name]
        old = layer.params[p]
        value = F.to_host(value, device=layer.device)
        if tuple(value.shape) != tuple(old.shape):
            raise ValueError(f"{self.name}: {key} has shape {tuple(old.shape)}, got "
                             f"{tuple(value.shape)}")
        layer.params[p] = F.asarray(np.array(value, dtype=old.dtype), device=layer.device)

    def zero_grads(self):
        for layer in self.layers.values():
            for p in layer.grads:
                layer.grads[p] = F.zeros_like(layer.params[p], device=layer.device)

    def num_params(self, trainable_only=False):
        return int(sum(v.size for n, layer in self.layers.items()
                       for p, v in layer.params.items()
                       if not trainable_only or layer.trainable(p)))

    def astype(self, dtype):
        """Cast every parameter (float64 for gradient checks)."""
        for layer in self.layers.values():
            for p in layer.params:
                host = F.to_host(layer.params[p], device=layer.device).astype(dtype)
                layer.params[p] = F.asarray(host, device=layer.device)
                layer.grads[p] = F.zeros_like(layer.params[p], device=layer.device)
        return self

    def to(self, device):
        """Run every layer on `device` ("numpy", "cpu", "cuda"; None: the current default),
        with the parameters and gradients copied to where it keeps arrays (kernels op
        "asarray": a GPU for cuda, the host otherwise; nothing is copied that is there)."""
        if device is not None:
            check_device(device)
        self.device = device
        for layer in self.layers.values():
            layer.to(device)
        return self

    # ------------------------------------------------------------------ files
    def save(self, path):
        """Write the parameters to an .npz (atomically: a temp file, then a rename)."""
        save_npz(path, self.params(host=True))

    def load(self, path, strict=True):
        """Read parameters saved by save(). Names and shapes must match (strict) or the
        matching ones are loaded; returns {"missing": [...], "unexpected": [...]}."""
        stored, own = read_npz(path, plain=True), self.params()   # checked (minifcn.files)
        missing = [k for k in own if k not in stored]
        unexpected = [k for k in stored if k not in own]
        bad = [f"{k}: file {stored[k].shape} vs net {own[k].shape}" for k in own
               if k in stored and stored[k].shape != own[k].shape]
        if bad or (strict and (missing or unexpected)):
            raise ValueError(f"{self.name}: {path} does not fit this net; shape mismatches "
                             f"{bad}, missing {missing}, unexpected {unexpected}")
        for k in own:
            if k in stored:
                self.set_param(k, stored[k])
        return {"missing": missing, "unexpected": unexpected}

    def summary(self):
        """One line per layer: name, type, bottoms -> tops, parameter shapes."""
        lines = []
        for name, layer in self.layers.items():
            ps = ", ".join(f"{p}{tuple(v.shape)}" for p, v in layer.params.items())
            lines.append(f"{name:16s} {layer!r:40s} {','.join(self.bottoms[name])} -> "
                         f"{','.join(self.tops[name])}  {ps}")
        return "\n".join(lines)


def _shape(v):
    return tuple(v.shape) if hasattr(v, "shape") else np.shape(v)


def save_npz(path, arrays):
    """np.savez, written atomically (minifcn.files): a crash never leaves a half-written file."""
    atomic_write(path, lambda f: np.savez(f, **arrays))
