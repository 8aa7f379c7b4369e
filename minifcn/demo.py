"""`make demo`: train a tiny FCN-8s on the built-in synthetic shapes, score it on held-out
images with the paper's four metrics, and draw what it sees.

    python -m minifcn.demo [--quick] [--out runs/demo] [--device cpu]

The schedule is fixed and seeded: the same data, the same initial weights, the same steps,
so the same held-out mean IU on every machine (bit for bit on one machine; across thread
counts only the order of float sums differs). A slower machine takes longer, and the
progress bar's ETA is measured from the steps it has run; it never gets a worse model.

Writes to --out: checkpoint.npz, log.jsonl, curves.png (training and validation loss,
validation mean IU, learning rate), scores.json, confusion.png, per_class_iu.png, and
overlays/*.png (image | truth | prediction, with a legend) for the first held-out images.
"""
from __future__ import annotations

import argparse
import os
import time

from . import cliargs as T
from . import metrics, models, train, viz
from .data import Loader, preprocess, synthetic_splits

NUM_CLASSES, SEED = 5, 0
# (steps, training images, what it gave): chosen by measurement, see benchmarks/RESULTS.md
FULL = dict(steps=1000, n_train=400, target=0.85)
QUICK = dict(steps=600, n_train=400, target=0.6)
BATCH, CROP, LR, N_VAL, VALIDATIONS = 8, 64, 3e-3, 100, 5


def make_parser():
    """The demo's flags, each checked by its type (minifcn.cliargs)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"{QUICK['steps']} steps instead of "
                    f"{FULL['steps']}: about a minute, a lower mean IU")
    ap.add_argument("--out", type=T.out_dir, default="runs/demo",
                    help="output folder (default runs/demo)")
    ap.add_argument("--device", choices=["numpy", "cpu", "cuda"], default="cpu",
                    help="where the kernels run (default cpu)")
    ap.add_argument("--minutes", type=float, help=argparse.SUPPRESS)   # gone: see below
    # Smaller settings, for the tests (the schedule stays fixed and seeded):
    ap.add_argument("--steps", type=T.positive_int,
                    help="training steps (default: the fixed schedule)")
    ap.add_argument("--n-train", type=T.positive_int, help="synthetic training images")
    ap.add_argument("--n-val", type=T.positive_int, default=N_VAL, help="held-out images")
    ap.add_argument("--batch", type=T.positive_int, default=BATCH,
                    help=f"images per step (default {BATCH})")
    ap.add_argument("--crop", type=T.positive_int, default=CROP,
                    help="square training crop side")
    ap.add_argument("--n-overlays", type=T.nonneg_int, default=8,
                    help="held-out overlays to draw (default 8)")
    return ap


def main(argv=None):
    ap = make_parser()
    a = ap.parse_args(argv)
    if a.minutes is not None:
        ap.error("--minutes is gone: the demo is now a fixed, seeded schedule (the same "
                 "result on every machine; a slower one takes longer); --quick for a short look")
    plan = QUICK if a.quick else FULL
    steps, n_train = a.steps or plan["steps"], a.n_train or plan["n_train"]

    train_set, val_set = synthetic_splits(n_train, a.n_val, seed=SEED, num_classes=NUM_CLASSES)
    print(f"data: {len(train_set)} training and {len(val_set)} held-out synthetic images "
          f"({', '.join(train_set.class_names)}), 64-96 px")
    items = [train_set[i] for i in range(len(train_set))]     # generated once, kept in memory
    net = models.fcn8s_tiny(num_classes=NUM_CLASSES, seed=SEED).to(a.device)
    print(f"model: fcn8s_tiny, {net.num_params():,} parameters, crops derived: "
          + ", ".join(f"{n} {layer.offset}" for n, layer in net.layers.items()
                      if type(layer).__name__ == "Crop"))
    loader = Loader(items, batch_size=a.batch, crop=(a.crop, a.crop), mirror=True, seed=SEED)
    solver = train.Adam(net, lr=LR, weight_decay=5e-4, policy="poly", max_iter=steps)
    log = os.path.join(a.out, "log.jsonl")
    if os.path.exists(log):                  # a fresh run: its own curves, not appended ones
        os.remove(log)
    trainer = train.Trainer(net, solver, loader, a.out, val_data=val_set,
                            num_classes=NUM_CLASSES, val_interval=max(1, steps // VALIDATIONS),
                            model_info=train.model_info("fcn8s_tiny", NUM_CLASSES,
                                                       train_set.class_names))
    print(f"schedule: {steps} steps of {a.batch} {a.crop}x{a.crop} crops (mirrored), Adam lr "
          f"{LR} with poly decay, validated every {trainer.val_interval} steps"
          + ("" if a.steps else f"; expect held-out mean IU >= {plan['target']}"))

    t0 = time.perf_counter()
    trainer.step()                           # a fresh install compiles its kernels here
    start = time.perf_counter()
    print(f"kernels ready in {start - t0:.1f} s (compiled once, then cached)")
    status = trainer.run(steps)              # the bar's ETA: from the steps run so far
    seconds = time.perf_counter() - start
    if status == "interrupted":
        print(f"interrupted at step {solver.iter}; checkpoint in {trainer.checkpoint_path}")
        return 130

    done, scores = trainer.last_val          # the run validated at its last step
    assert done == steps, (done, steps)
    names = val_set.class_names
    print(f"\n{steps} steps in {seconds:.0f} s ({seconds / steps * 1e3:.0f} ms per step with "
          f"validation). Held-out images:\n{metrics.format_table(scores, names)}")
    metrics.save_json(os.path.join(a.out, "scores.json"), scores, names)
    viz.save_confusion(scores["confusion"].hist, os.path.join(a.out, "confusion.png"), names)
    viz.save_class_iu(scores["per_class_iu"], os.path.join(a.out, "per_class_iu.png"), names)
    folder = os.path.join(a.out, "overlays")
    n_over = min(a.n_overlays, len(val_set))
    for i in range(n_over):
        img, label = val_set[i]
        pred = train.predict(net, preprocess(img)[None])[0]
        viz.save_overlay(img, pred, os.path.join(folder, f"val_{i:03d}.png"), truth=label,
                         class_names=names)
    print(f"\nwrote {a.out}/: curves.png, confusion.png, per_class_iu.png, scores.json, "
          f"log.jsonl, checkpoint.npz and {n_over} overlays (image | truth | prediction) "
          f"in overlays/")
    print(f"next: minifcn eval --weights {a.out}/checkpoint.npz --plots {a.out}/eval "
          f"--json {a.out}/eval/scores.json   (the checkpoint names its model and classes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
