"""Train a tiny FCN-8s on the built-in synthetic shapes, with the library API.

    python examples/train_synthetic.py --iters 600 --out runs/synthetic

The same steps as `make demo`, spelled out: data -> loader -> net -> solver -> trainer ->
metrics. Adam at 3e-3 suits a small net trained from scratch; the paper's SGD settings
(examples/train_voc_staged.py) suit big nets started from ImageNet weights.
"""
import argparse

from minifcn import metrics, models, train
from minifcn.data import Loader, synthetic_splits


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--n-train", type=int, default=400)
    p.add_argument("--n-val", type=int, default=100)
    p.add_argument("--model", default="fcn8s_tiny", choices=sorted(models.MODELS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/synthetic")
    a = p.parse_args(argv)

    train_set, val_set = synthetic_splits(a.n_train, a.n_val, seed=0)
    items = [train_set[i] for i in range(len(train_set))]       # generate once, keep
    loader = Loader(items, batch_size=a.batch, crop=a.crop, mirror=True, seed=0)

    net = models.MODELS[a.model](num_classes=train_set.num_classes).to(a.device)
    solver = train.Adam(net, lr=a.lr, weight_decay=5e-4, policy="poly", max_iter=a.iters)
    trainer = train.Trainer(net, solver, loader, a.out, val_data=val_set,
                            num_classes=train_set.num_classes, val_interval=max(1, a.iters // 4),
                            model_info=train.model_info(a.model, train_set.num_classes,
                                                        train_set.class_names))
    trainer.run(a.iters)

    scores = train.evaluate(net, val_set, train_set.num_classes)
    print(metrics.format_table(scores, val_set.class_names))
    print(f"checkpoint, log and curves in {a.out}")
    return scores


if __name__ == "__main__":
    main()
