"""`make demo`: train a tiny FCN-8s on the built-in synthetic shapes, score it on held-out
images with the paper's four metrics, and draw what it sees.

    python -m minifcn.demo [--minutes 2.5] [--out runs/demo] [--device cpu]

Writes to --out: checkpoint.npz, log.jsonl, curves.png (loss and validation mean IU), and
overlays/*.png (image | ground truth | prediction) for the first held-out images.

The budget is wall-clock time, so the demo first times a few steps on this machine, then
plans the run (a poly learning-rate decay that reaches zero when the time is up).
"""
from __future__ import annotations

import argparse
import os
import time

from . import metrics, models, train, viz
from .data import Loader, preprocess, synthetic_splits

NUM_CLASSES, CROP, BATCH, LR = 5, (64, 64), 8, 3e-3
COMPILE, TIMED = 2, 10       # steps that compile the Numba kernels; steps timed to plan the run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.5, help="training time budget")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--device", choices=["numpy", "cpu", "cuda"], default="cpu")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--n-overlays", type=int, default=8)
    a = ap.parse_args(argv)
    if a.minutes <= 0 or min(a.n_train, a.n_val) < 1:
        ap.error("--minutes, --n-train and --n-val must be positive")

    train_set, val_set = synthetic_splits(a.n_train, a.n_val, seed=0, num_classes=NUM_CLASSES)
    print(f"data: {len(train_set)} training and {len(val_set)} held-out synthetic images "
          f"({', '.join(train_set.class_names)}), 64-96 px")
    items = [train_set[i] for i in range(len(train_set))]     # generated once, kept in memory
    net = models.fcn8s_tiny(num_classes=NUM_CLASSES).to(a.device)
    print(f"model: fcn8s_tiny, {net.num_params():,} parameters, crops derived: "
          + ", ".join(f"{n} {layer.offset}" for n, layer in net.layers.items()
                      if type(layer).__name__ == "Crop"))
    loader = Loader(items, batch_size=BATCH, crop=CROP, mirror=True, seed=0)
    solver = train.Adam(net, lr=LR, weight_decay=5e-4)
    trainer = train.Trainer(net, solver, loader, a.out, val_data=val_set,
                            num_classes=NUM_CLASSES, checkpoint_interval=None)

    budget = a.minutes * 60
    t0 = time.perf_counter()
    for _ in range(COMPILE):                 # a fresh install compiles its kernels here
        trainer.step()
    start = time.perf_counter()
    print(f"kernels ready in {start - t0:.1f} s (compiled once, then cached)")
    for _ in range(TIMED):
        trainer.step()
    per_step = (time.perf_counter() - start) / TIMED
    iters = max(COMPILE + TIMED + 1, int(budget / per_step * 0.9))  # 10% for validation
    solver.policy, solver.max_iter = "poly", iters
    trainer.val_interval = max(1, iters // 5)
    print(f"training: Adam lr {LR}, batch {BATCH}, {CROP[0]}x{CROP[1]} crops with mirroring; "
          f"{per_step * 1e3:.0f} ms/step here, so {iters} steps in {a.minutes:g} min")
    status = trainer.run(iters, max_seconds=budget - (time.perf_counter() - start))
    seconds = time.perf_counter() - start

    scores = train.evaluate(net, val_set, NUM_CLASSES)
    print(f"\n{status} after {solver.iter} steps, {seconds:.0f} s of training. Held-out "
          f"images:\n{metrics.format_table(scores, val_set.class_names)}")
    folder = os.path.join(a.out, "overlays")
    for i in range(min(a.n_overlays, len(val_set))):
        img, label = val_set[i]
        pred = train.predict(net, preprocess(img)[None])[0]
        viz.save_overlay(img, pred, os.path.join(folder, f"val_{i:03d}.png"), truth=label)
    print(f"\nwrote {a.out}/curves.png, {a.out}/log.jsonl, {a.out}/checkpoint.npz and "
          f"{min(a.n_overlays, len(val_set))} overlays (image | truth | prediction) in {folder}")
    print(f"next: minifcn eval --model fcn8s_tiny --num-classes {NUM_CLASSES} --weights "
          f"{a.out}/checkpoint.npz --overlays {a.out}/eval")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
