"""The `minifcn` command: train, eval, predict, rf, convert, bench.

Every verb checks its arguments and inputs before work starts; a bad argument, a missing
file or a malformed dataset prints one line on stderr and exits non-zero, never a traceback.

Under an MPI launcher (`mpiexec -n N minifcn train ...`, srun) train and eval split their
work over the ranks (minifcn.distributed); rank 0 alone prints and writes. A set-up error on
any rank stops them all with one line from rank 0.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from . import cliargs as T

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class UsageError(Exception):
    """A command-line mistake: reported on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):             # one line, not argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


# ----------------------------------------------------------------------------- shared pieces
def _add_model(p, required=True, default="the checkpoint's"):
    # default None: eval and predict take what the checkpoint says (minifcn.inference.resolve)
    p.add_argument("--model", default=None, required=required,
                   help=f"model name (see `minifcn rf --list`; default {default})")
    p.add_argument("--num-classes", type=T.num_classes, default=None,
                   help="number of classes incl. background (default: the checkpoint's, "
                        "else the dataset's)")


def _add_device(p):
    p.add_argument("--device", choices=["numpy", "cpu", "cuda"], default="cpu",
                   help="where the kernels run (default cpu)")


def _add_data(p, split_default):
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (built in) or a directory in the PASCAL VOC layout")
    p.add_argument("--split", default=split_default, help="split file name in ImageSets/Segmentation")
    p.add_argument("--sbd", action="store_true", help="the directory is in SBD's layout (cls/*.mat)")
    p.add_argument("--synthetic-size", type=T.positive_int, default=None, metavar="N",
                   help="number of synthetic images (default 400 train / 100 val)")


def model_names():
    from . import models
    return sorted(models.MODELS)


def build_model(name, num_classes, loss=True, **kw):
    """models.build, with an unknown name reported as a usage mistake."""
    from . import models
    if num_classes is not None:
        kw["num_classes"] = num_classes
    try:
        return models.build(name, loss=loss, **kw)
    except models.UnknownModel as e:
        raise UsageError(str(e)) from None


def load_dataset(spec, split, num_classes=None, sbd=False, n=None, seed=0):
    from .data import open_dataset
    return open_dataset(spec, split, num_classes, sbd=sbd, n=n, seed=seed)


def load_weights(net, path):
    from .weights import load_weights
    return load_weights(net, path)


# ----------------------------------------------------------------------------- verbs
def _say(comm):
    """print on rank 0 (or alone); a no-op on the other ranks."""
    return print if comm is None or comm.rank == 0 else (lambda *args, **kw: None)


def cmd_train(a):
    from .runlock import RunLock
    if a.solver:                         # the reference's solve.py (minifcn.caffe.commands)
        if a.comm is not None:
            raise UsageError("--solver does not split over ranks: run it without mpiexec, "
                             "or train with minifcn's own flags under mpiexec")
        from .caffe import commands
        with RunLock(a.out):
            return commands.train(a)
    if a.prototxt:
        raise UsageError("--prototxt goes with --solver (the solver.prototxt)")
    with contextlib.ExitStack() as held:     # --out/train.lock, held by rank 0 till the end
        return _train(a, held)


def _train(a, held):
    from . import distributed
    from .runlock import RunLock
    a.iters = a.iters or 1000
    a.model = a.model or "fcn8s_tiny"
    comm = a.comm
    with distributed.agreed(comm):           # set-up: no collective in here
        if comm is None or comm.rank == 0:
            held.enter_context(RunLock(a.out))
        trainer, net, val, num_classes = _train_setup(a, comm)
    say = _say(comm)
    status = trainer.run(a.iters, max_seconds=None if a.minutes is None else a.minutes * 60)
    say(f"training {status} at iteration {trainer.solver.iter}; checkpoint "
        f"{trainer.checkpoint_path}" + (f" ({comm.size} ranks)" if comm else ""))
    if val is not None:                  # the run's own last validation, if it is of now
        done, scores = trainer.last_val or (None, None)
        if done != trainer.solver.iter:
            from .train import evaluate
            with distributed.abort_on_error(comm, "in the final evaluation"):
                scores = evaluate(net, val, num_classes, comm=comm)
        say(_metrics_line(scores))
    return EXIT_INTERRUPTED if status == "interrupted" else 0


def _train_setup(a, comm):
    from . import data, distributed, train
    say = _say(comm)
    if comm is not None and a.device == "cuda":
        distributed.select_gpu(comm)         # rank r: GPU r % device_count, before any copy
    dataset, num_classes = load_dataset(a.data, a.split, a.num_classes, a.sbd, a.synthetic_size,
                                        a.seed)
    val, _ = (load_dataset(a.data, a.val_split, num_classes, a.sbd, a.synthetic_size, a.seed)
              if a.val_split else (None, None))
    if a.crop is None and a.batch > 1 and a.data != "synthetic":
        raise UsageError("--batch > 1 needs images of one size: give --crop H W (or --batch 1)")
    net = build_model(a.model, num_classes, loss=True, seed=a.seed,    # --seed: weights too
                      **({"normalize": a.normalize} if a.normalize else {}))
    if a.class_weights is not None:
        problem = T.check_class_weights(a.class_weights, num_classes)
        if problem:
            raise UsageError(problem)
        net.layers["loss"].class_weights = np.asarray(a.class_weights)
    for path in a.weights or []:
        load_weights(net, path)
    if a.vgg16:
        from .weights import import_torchvision_vgg16, load_torch_state_dict
        report = import_torchvision_vgg16(net, load_torch_state_dict(a.vgg16))
        say(f"imported VGG16 weights from {a.vgg16}: {report}")
    net.to(a.device)
    # what the checkpoint will say it holds (read before the dataset becomes a list)
    described = train.model_info(a.model, num_classes, getattr(dataset, "class_names", None))
    if a.data == "synthetic":                # generated on the fly: hold it in memory
        dataset = [dataset[i] for i in range(len(dataset))]
    loader = data.Loader(dataset, batch_size=a.batch, seed=a.seed, workers=a.workers,
                         crop=tuple(a.crop) if a.crop else None, mirror=a.mirror)
    solver = train.make_solver(net, a.optimizer, lr=a.lr, momentum=a.momentum,
                               weight_decay=a.weight_decay, policy=a.lr_policy, gamma=a.gamma,
                               stepsize=a.stepsize, power=a.power, max_iter=a.iters)
    trainer = train.Trainer(net, solver, loader, a.out, val_data=val, num_classes=num_classes,
                            iter_size=a.iter_size, loss_sample=a.loss_sample, sample_seed=a.seed,
                            val_interval=a.val_interval, checkpoint_interval=a.checkpoint_interval,
                            progress=not a.no_progress, comm=comm, bucket_mb=a.bucket_mb,
                            model_info=described)
    if a.resume:
        path = trainer.checkpoint_path if a.resume == "last" else a.resume
        info = trainer.resume(path)
        say(f"resumed from {path} at iteration {info['iter']}")
    return trainer, net, val, num_classes


def _resolve(a):
    """--model, --num-classes and --mean from the flags, else from the checkpoint (a flag
    that contradicts it is refused by name); a.class_names, a.preprocess set too."""
    from .inference import resolve
    a.model, a.num_classes, a.class_names, a.preprocess = resolve(
        a.weights, a.model, a.num_classes, getattr(a, "mean", None),
        {"model": "--model", "num_classes": "--num-classes"})
    if a.model is None:
        raise UsageError(f"{a.weights} does not say which model it holds: "
                         f"give --model (see `minifcn rf --list`)")


def _metrics_line(s):
    return (f"pixel acc {s['pixel_acc']:.4f}  mean acc {s['mean_acc']:.4f}  mean IU "
            f"{s['mean_iu']:.4f}  f.w. IU {s['fw_iu']:.4f}")


def cmd_eval(a):
    from . import distributed, metrics, train, viz
    from .scene_models import MODELS as SCENES
    comm = a.comm
    if a.prototxt or a.model in SCENES:   # per-head scores (SIFT Flow: semantics + geometry)
        if comm is not None:
            raise UsageError("eval of a prototxt or a scene model does not split over "
                             "ranks: run it without mpiexec")
        from .caffe import commands
        return commands.evaluate(a)
    with distributed.agreed(comm):
        if comm is not None and a.device == "cuda":
            distributed.select_gpu(comm)
        _resolve(a)
        dataset, num_classes = load_dataset(a.data, a.split, a.num_classes, a.sbd,
                                            a.synthetic_size)
        net = build_model(a.model, num_classes, loss=True)
        load_weights(net, a.weights)
        net.to(a.device)
    with distributed.abort_on_error(comm, "in evaluation"):
        scores = train.evaluate(net, dataset, num_classes, mean=a.preprocess["mean"],
                                progress=True, comm=comm)
    if comm is not None and comm.rank != 0:
        return 0
    names = getattr(dataset, "class_names", None) or a.class_names
    if names is not None and len(names) != num_classes:
        names = None
    print(metrics.format_table(scores, names))
    if a.json:
        metrics.save_json(a.json, scores, names)
        print(f"scores in {a.json}")
    if a.plots:
        hist = scores["confusion"].hist
        viz.save_confusion(hist, os.path.join(a.plots, "confusion.png"), names)
        viz.save_class_iu(scores["per_class_iu"], os.path.join(a.plots, "per_class_iu.png"),
                          names)
        print(f"confusion.png and per_class_iu.png in {a.plots}")
    if a.overlays:
        for i in range(min(a.n_overlays, len(dataset))):
            img, label = dataset[i]
            pred = _predict_image(net, img, a.preprocess["mean"])
            viz.save_overlay(img, pred, os.path.join(a.overlays, f"{i:04d}.png"), truth=label,
                             class_names=names)
        print(f"overlays (image | truth | prediction) in {a.overlays}")
    return 0


def _predict_image(net, img, mean):
    from .data import preprocess
    from .train import predict
    return predict(net, preprocess(img, mean)[None])[0]


def cmd_predict(a):
    if a.prototxt:
        from .caffe import commands
        return commands.predict(a)
    from .inference import Model, image_list, predict_files
    # every input exists, before any work (--out was checked by its type, cliargs.out_dir)
    image_list(a.images)
    _resolve(a)
    if a.num_classes is None:
        raise UsageError(f"{a.weights} does not say how many classes its "
                         f"model has: give --num-classes")
    net = build_model(a.model, a.num_classes, loss=False)
    load_weights(net, a.weights)
    net.to(a.device)
    t0 = time.perf_counter()
    names = predict_files(Model(net, a.num_classes, a.class_names, a.preprocess), a.images, a.out)
    dt = time.perf_counter() - t0
    print(f"{len(names)} images in {dt:.2f} s: {len(names) / dt:.2f} images/s")
    return 0


def cmd_rf(a):
    from .coordmap import rf_table
    if a.list:
        print("\n".join(model_names()))
        return 0
    if not a.model:
        raise UsageError("give a model name (or --list)")
    net = build_model(a.model, a.num_classes or 21, loss=False, materialize=False)
    print(rf_table(net, tuple(a.size)))
    return 0


def cmd_convert(a):
    from .caffe import commands
    return commands.convert(a)


def _add_caffe(p, what):
    p.add_argument("--prototxt", help=f"a Caffe {what} .prototxt instead of --model")
    p.add_argument("--max-channels", type=T.positive_int, default=None, metavar="N",
                   help="cap every layer's width at N, geometry kept (a quick look)")
    p.add_argument("--crops", choices=["check", "derive", "file"], default="check",
                   help="a prototxt Crop whose offset differs from the derived one: refuse "
                        "(check), use minifcn's (derive) or the file's (file)")


def cmd_bench(a):
    from .bench import command
    return command.main(a)


# ----------------------------------------------------------------------------- parser
def make_parser():
    p = _Parser(prog="minifcn", description="Fully Convolutional Networks from scratch.")
    sub = p.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train a model", description="Train a model; writes a "
                       "checkpoint, log.jsonl and curves.png to --out.")
    _add_model(t, required=False, default="fcn8s_tiny")
    _add_data(t, "train")
    _add_device(t)
    t.add_argument("--val-split", default="val", help="split to validate on ('' for none)")
    t.add_argument("--out", type=T.out_dir, default="runs/train", help="output directory "
                   "(one run at a time: it holds --out/train.lock while it trains)")
    t.add_argument("--workers", type=T.nonneg_int, default=0, help="threads decoding the next "
                   "batches while the net trains (default 0: none)")
    t.add_argument("--iters", type=T.positive_int, default=None, help="iterations (default "
                   "1000, or the solver's max_iter)")
    t.add_argument("--solver", help="a Caffe solver.prototxt: train as the reference's solve.py")
    _add_caffe(t, "train net (with --solver)")
    t.add_argument("--minutes", type=T.positive_float, default=None,
                   help="stop after this much training")
    t.add_argument("--batch", type=T.positive_int, default=1, help="images per batch")
    t.add_argument("--crop", type=T.positive_int, nargs=2, metavar=("H", "W"),
                   help="train on random H x W crops (needed for --batch > 1 on real data)")
    t.add_argument("--mirror", action="store_true", help="mirror images at random")
    t.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                   help="sgd (with momentum, as the paper) or adam")
    t.add_argument("--lr", type=T.positive_float, default=1e-3, help="base learning rate")
    t.add_argument("--momentum", type=T.unit_interval, default=0.9,
                   help="SGD momentum in [0, 1) (Adam's beta1)")
    t.add_argument("--weight-decay", type=T.nonneg_float, default=5e-4,
                   help="L2 weight decay (scaled by each parameter's decay_mult)")
    t.add_argument("--lr-policy", choices=["fixed", "step", "poly"], default="fixed",
                   help="Caffe's lr policy: fixed, step (x gamma every stepsize) or poly")
    t.add_argument("--gamma", type=T.positive_float, default=0.1,
                   help="step policy: the factor applied every --stepsize iterations")
    t.add_argument("--stepsize", type=T.positive_int, default=None,
                   help="step policy: iterations between lr steps")
    t.add_argument("--power", type=T.positive_float, default=0.9,
                   help="poly policy: lr = base_lr (1 - iter/max_iter)^power")
    t.add_argument("--iter-size", type=T.positive_int, default=1,
                   help="batches per update (accumulated)")
    t.add_argument("--loss-sample", type=T.probability, default=None, metavar="P",
                   help="keep each pixel's loss term with probability P (paper 3.4)")
    t.add_argument("--normalize", choices=["valid", "batch", "none"], default=None,
                   help="loss normalisation (default: the model's; the VGG FCNs use 'batch' "
                        "as the reference, which wants a tiny lr such as 1e-10)")
    t.add_argument("--class-weights", type=T.nonneg_float, nargs="+", default=None,
                   metavar="W", help="a loss weight per class (one per class, >= 0, not all "
                   "zero)")
    t.add_argument("--weights", action="append", metavar="PATH[:SUFFIX]",
                   help="initial weights (.npz, .caffemodel, .pth); with --solver transplanted "
                        "as surgery.transplant (a suffix for NYUD's two trunks); repeatable")
    t.add_argument("--vgg16", help="torchvision VGG16 .pth to start from (the paper's recipe)")
    t.add_argument("--resume", nargs="?", const="last", help="continue from a checkpoint "
                   "(default: the one in --out)")
    t.add_argument("--val-interval", type=T.positive_int, default=200,
                   help="validate every N iterations")
    t.add_argument("--checkpoint-interval", type=T.positive_int, default=200,
                   help="save a checkpoint every N iterations")
    t.add_argument("--seed", type=T.seed, default=0,
                   help="seed of the data order, crops and weight initialisation")
    t.add_argument("--bucket-mb", type=T.positive_float, default=25.0, metavar="MB",
                   help="under mpiexec: gradients are summed over ranks in buckets of about "
                        "this size, each as soon as backward has made it (default 25)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="score a model on a dataset split (the paper's 4 metrics)")
    _add_model(e, required=False)
    _add_data(e, "val")
    _add_device(e)
    e.add_argument("--weights", required=True, help="weights (.npz, checkpoint, .caffemodel, "
                   ".pth)")
    _add_caffe(e, "val/test net (its data layer names the data; --data replaces the folder)")
    e.add_argument("--overlays", type=T.out_dir, help="write image|truth|prediction PNGs here")
    e.add_argument("--n-overlays", type=T.positive_int, default=8,
                   help="how many overlays --overlays gets (default 8)")
    e.add_argument("--json", type=T.out_file, metavar="PATH", help="write the four metrics, "
                   "per-class IU and the confusion matrix to this JSON file")
    e.add_argument("--plots", type=T.out_dir, metavar="DIR", help="write confusion.png and "
                   "per_class_iu.png here")
    e.set_defaults(fn=cmd_eval)

    r = sub.add_parser("predict", help="segment images of any size")
    _add_model(r, required=False)
    _add_device(r)
    r.add_argument("--weights", required=True, help="weights (.npz, checkpoint, .caffemodel, "
                   ".pth)")
    r.add_argument("--mean", type=T.finite_float, nargs=3, metavar=("B", "G", "R"),
                   default=None,
                   help="mean to subtract (default: the checkpoint's, else VOC's, as the "
                        "reference's infer.py)")
    _add_caffe(r, "deploy net")
    r.add_argument("--out", type=T.out_dir, default="predictions", help="output directory")
    r.add_argument("images", nargs="+", help="image files, or folders of them (their image "
                   "files, sorted)")
    r.set_defaults(fn=cmd_predict)

    f = sub.add_parser("rf", help="per-layer sizes, receptive fields and crop offsets")
    f.add_argument("model", nargs="?", help="model name (see --list)")
    f.add_argument("--size", type=T.positive_int, nargs=2, default=(500, 500),
                   metavar=("H", "W"), help="input size (default 500 500)")
    f.add_argument("--num-classes", type=T.num_classes, default=None,
                   help="classes of the score layers (default 21)")
    f.add_argument("--list", action="store_true", help="list the model names")
    f.set_defaults(fn=cmd_rf)

    c = sub.add_parser("convert", help="weights of any kind (.caffemodel, .pth, .npz) into an "
                       ".npz (or .caffemodel)")
    c.add_argument("input", help="the weights to read (.caffemodel, .pth, .npz)")
    c.add_argument("output", type=T.out_file,
                   help="OUT.npz, or OUT.caffemodel to go back to Caffe")
    c.add_argument("--model", help="the net the weights are for (see `minifcn rf --list`)")
    c.add_argument("--num-classes", type=T.num_classes, default=None,
                   help="classes of the net's score layers (default 21)")
    c.add_argument("--partial", action="store_true", help="allow weights that fill only part "
                   "of the net")
    _add_caffe(c, "net")
    c.set_defaults(fn=cmd_convert)

    from .bench import command
    b = sub.add_parser("bench", help="time kernels, layers and nets",
                       description="Time kernels, layers and nets side by side with references.")
    command.add_arguments(b)
    b.set_defaults(fn=cmd_bench)
    return p


def _check_args(a):
    """What one flag's type (minifcn.cliargs) cannot see alone, before any work."""
    if a.verb != "train" or a.solver:
        return
    from .data import VOC_CLASSES
    classes = a.num_classes or (5 if a.data == "synthetic" else len(VOC_CLASSES))  # the
    problems = [a.class_weights is not None and                  # defaults of open_dataset
                T.check_class_weights(a.class_weights, classes),
                a.crop and T.check_score_memory(classes, a.batch, *a.crop)]
    for problem in problems:
        if problem:
            raise UsageError(problem)


SPLIT_VERBS = ("train", "eval")        # the verbs that split their work over MPI ranks


def _world(a):
    """The MPI communicator when a launcher started several of us (train, eval), else None."""
    from . import distributed
    got = distributed.launched()
    if got is None or got[0] <= 1:
        return None
    if a.verb not in SPLIT_VERBS:
        raise UsageError(f"{a.verb} does not split its work over ranks: run it without "
                         f"mpiexec (under mpiexec -n N: {', '.join(SPLIT_VERBS)})")
    return distributed.world()


def _bad_input():
    """The errors that report a mistake in what the user gave (a file, a flag, a dataset, the
    machine's set-up): one line, no traceback. Any other exception is a bug in minifcn and
    keeps its traceback."""
    from .data import DatasetError
    from .distributed import MPISetupError
    from .files import BadFileError
    from .kernels import DeviceUnavailable
    from .runlock import LockHeld
    from .train import TrainingDiverged
    return (ValueError, OSError, BadFileError, DatasetError, DeviceUnavailable,
            TrainingDiverged, MPISetupError, LockHeld)


def _verb(argv):
    """`minifcn VERB` for the error line (the verb is the first word that is no option)."""
    words = [w for w in (sys.argv[1:] if argv is None else argv) if not w.startswith("-")]
    verbs = ("train", "eval", "predict", "rf", "convert", "bench")
    return f"minifcn {words[0]}" if words and words[0] in verbs else "minifcn"


def main(argv=None):
    from .distributed import Quiet, launched
    # Under mpiexec every rank runs this; only the launcher's rank 0 speaks.
    speak = (launched() or (1, 0))[1] == 0
    say = (lambda msg: print(msg, file=sys.stderr)) if speak else (lambda msg: None)
    try:
        a = make_parser().parse_args(argv)
        if argv is None and a.fn is cmd_bench:    # the command line: bench with a clean BLAS
            from .bench.timing import restart_without_blas_env
            restart_without_blas_env()
        _check_args(a)
        a.comm = _world(a)
        return a.fn(a)
    except Quiet as e:                      # another rank reports it
        return e.code
    except UsageError as e:
        say(f"{_verb(argv)}: error: {e}")
        return EXIT_USAGE
    except _bad_input() as e:
        say(f"{_verb(argv)}: error: {e}")
        return EXIT_ERROR
    except KeyboardInterrupt:
        say(f"{_verb(argv)}: interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
