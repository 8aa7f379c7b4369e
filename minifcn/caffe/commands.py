"""What the `minifcn` verbs do with Caffe's files (minifcn.cli parses the arguments):

    minifcn train --solver voc-fcn32s/solver.prototxt --weights vgg16fc.caffemodel
    minifcn predict --prototxt voc-fcn8s/deploy.prototxt --weights fcn8s.caffemodel img.jpg
    minifcn eval --prototxt siftflow-fcn16s/test.prototxt --weights siftflow.caffemodel
    minifcn convert fcn8s-heavy-pascal.caffemodel fcn8s.npz --model fcn8s

train runs the reference's solve.py: the solver's train net (or --prototxt), its Python data
layer's dataset (paths in its param_str are taken from the prototxt's folder, or --data
replaces the dataset folder), the surgery (transplant each --weights PATH[:SUFFIX], bilinear
upsamplers, NYUD's conv1_1_bgrd), then the solver's iterations (max_iter, or --iters).
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["train", "predict", "evaluate", "convert", "weights_spec", "open_net"]


def weights_spec(spec):
    """'PATH' or 'PATH:SUFFIX' (a suffix for NYUD's late fusion: conv1_1 -> conv1_1color)."""
    if not os.path.exists(spec) and ":" in spec:
        path, suffix = spec.rsplit(":", 1)
        if suffix.isidentifier():
            return path, suffix
    return spec, ""


def open_net(prototxt, phase, a):
    from .net import read_net
    return read_net(prototxt, phase=phase, max_channels=getattr(a, "max_channels", None),
                    crops=getattr(a, "crops", "check"), seed=getattr(a, "seed", 0))


def _dataset(net, prototxt, a):
    from ..datasets import from_data_layer
    layers = net.caffe.data_layers
    if len(layers) != 1:
        raise ValueError(f"{prototxt}: needs exactly one Python data layer to know its data "
                         f"(has {len(layers)})")
    root = None if a.data in (None, "synthetic") else a.data
    return layers[0], from_data_layer(layers[0], os.path.dirname(os.path.abspath(prototxt)),
                                      root)


def train(a):
    from ..datasets import TopsLoader
    from ..train import Trainer
    from .solver import make_solver, read_solver, surgery
    spec = read_solver(a.solver)
    proto = a.prototxt or spec.train_net
    if not proto:
        raise ValueError(f"{a.solver} names no train_net: give --prototxt")
    net = open_net(proto, "train", a)
    layer, ds = _dataset(net, proto, a)
    for path, _ in map(weights_spec, a.weights or []):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} does not exist")
    surgery(net, [weights_spec(w) for w in a.weights or []])
    net.to(a.device)
    randomize = layer.params.get("randomize", True) and "train" in str(layer.params["split"])
    loader = TopsLoader(ds, shuffle=randomize, seed=layer.params.get("seed") or 1337)
    solver = make_solver(net, spec)
    iters = a.iters or spec.max_iter
    if not iters:
        raise ValueError(f"{a.solver} gives no max_iter: give --iters")
    trainer = Trainer(net, solver, loader, a.out, iter_size=spec.iter_size,
                      checkpoint_interval=spec.snapshot or None, progress=not a.no_progress)
    if a.resume:
        info = trainer.resume(trainer.checkpoint_path if a.resume == "last" else a.resume)
        print(f"resumed at iteration {info['iter']}")
    print(f"{proto}: {len(ds)} items of {type(ds.ds).__name__}, lr {spec.base_lr:g} "
          f"({spec.lr_policy}), momentum {spec.momentum}, iter_size {spec.iter_size}")
    status = trainer.run(iters, log_every=spec.display or 10)
    print(f"training {status} at iteration {solver.iter}; checkpoint {trainer.checkpoint_path}")
    return 130 if status == "interrupted" else 0


def _load(net, path, strict=True):
    from ..weights import load_weights
    report = load_weights(net, path, strict=strict)
    if report is not None and not isinstance(report, dict):
        print(f"weights {path}: {str(report).splitlines()[0]}")
    return report


def predict(a):
    from ..coordmap import blob_shapes
    from ..inference import DEFAULT_PREPROCESS, Model, image_list, predict_files
    # every input exists, before any work (--out was checked by its type, cliargs.out_dir)
    image_list(a.images)
    net = open_net(a.prototxt, "test", a)
    if "data" not in net.inputs or len(net.inputs) != 1:
        raise ValueError(f"{a.prototxt}: predict needs a deploy net with one input 'data' "
                         f"(has {net.inputs})")
    out_blob = "score" if "score" in net.producer else net.outputs[0]
    _load(net, a.weights)
    net.to(a.device)
    pre = {**DEFAULT_PREPROCESS, **({"mean": list(a.mean)} if a.mean else {})}
    classes = blob_shapes(net, (64, 64))[out_blob][0]
    predict_files(Model(net, classes, None, pre, out=out_blob), a.images, a.out)
    return 0


def evaluate(a, net=None, dataset=None):
    """Score each head of a val/test prototxt (or a section-5 model) on its dataset."""
    from ..datasets import evaluate_heads, format_heads
    if net is None and a.prototxt:
        net = open_net(a.prototxt, "test", a)
        _, dataset = _dataset(net, a.prototxt, a)
    elif net is None:
        from ..cli import build_model
        net = build_model(a.model, a.num_classes, loss=True)
        dataset = scene_dataset(a.model, a.data, a.split)
    _load(net, a.weights)
    net.to(a.device)
    results = evaluate_heads(net, dataset, progress=True)
    print(format_heads(results, dataset))
    return 0


def scene_dataset(model, root, split):
    """The dataset of a section-5 model (minifcn.scene_models), its tops named as the net's
    inputs: siftflow_* -> SIFT Flow, nyud_* -> NYUDv2, pascalcontext_* -> PASCAL-Context
    (root holding both VOC2010/ and the context files)."""
    from ..datasets import NYUD, PASCALContext, SIFTFlow, _Renamed
    if root in (None, "synthetic") or not os.path.isdir(root):
        raise FileNotFoundError(f"{model} is scored on its dataset: give --data DIR (not "
                                f"{root!r})")
    if model.startswith("siftflow"):
        return _Renamed(SIFTFlow(root, split), ("data", "sem", "geo"))
    if model.startswith("pascalcontext"):
        return _Renamed(PASCALContext(root, root, split), ("data", "label"))
    tops = {"nyud_fcn32s_color": (("color", "label"), ("data", "label")),
            "nyud_fcn32s_hha": (("hha", "label"), ("data", "label")),
            "nyud_fcn32s_color_d": (("color", "depth", "label"),) * 2,
            "nyud_fcn32s_color_hha": (("color", "hha", "label"),) * 2}[model]
    return _Renamed(NYUD(root, split, tops[0]), tops[1])


def convert(a):
    """Read weights of any kind into a net, write them as .npz (or .caffemodel)."""
    from ..cli import build_model
    from .caffemodel import write_weights
    if bool(a.prototxt) == bool(a.model):
        raise ValueError("convert: give --prototxt or --model (one of them)")
    net = (open_net(a.prototxt, "test", a) if a.prototxt else
           build_model(a.model, a.num_classes or 21, loss=False, materialize=False))
    _load(net, a.input, strict=not a.partial)
    if a.output.endswith(".caffemodel"):
        write_weights(net, a.output)
    else:
        net.save(a.output)
    print(f"wrote {net.num_params():,} parameters of {net.name} to {a.output}")
    return 0
