"""The paper's staged recipe on a PASCAL VOC-layout directory: FCN-32s from ImageNet VGG16,
then FCN-16s from FCN-32s, then FCN-8s from FCN-16s (sections 4.1-4.3).

    python examples/train_voc_staged.py --data VOCdevkit/VOC2012 --vgg16 vgg16-397923af.pth

Each stage copies the previous stage's weights by name (the reference's surgery.transplant);
the new skip score layers start at zero, so each stage begins where the last one ended.
The solver is the reference's: SGD, momentum 0.99, weight decay 5e-4, batch 1, the loss
summed over pixels ("batch" normalisation) with learning rates 1e-10, 1e-12, 1e-14 -- tiny
because the summed loss is large. --backbone tiny runs the same recipe on a small net.
"""
import argparse
import os

from minifcn import metrics, models, train
from minifcn.data import Loader, VOCSegmentation, validate_voc
from minifcn.weights import import_torchvision_vgg16, transplant

STAGES = [("fcn32s", 1e-10), ("fcn16s", 1e-12), ("fcn8s", 1e-14)]   # the reference solvers


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="directory in the VOC layout")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--vgg16", help="torchvision VGG16 .pth (the paper starts from ImageNet)")
    p.add_argument("--backbone", default="vgg16", choices=["vgg16", "tiny"])
    p.add_argument("--iters", type=int, default=100000, help="iterations per stage")
    p.add_argument("--lr-scale", type=float, default=1.0,
                   help="multiply the reference learning rates (e.g. for 'valid' normalisation)")
    p.add_argument("--normalize", default="batch", choices=["valid", "batch", "none"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/voc")
    a = p.parse_args(argv)

    for split in (a.train_split, a.val_split):       # refuse a broken dataset before training
        validate_voc(a.data, split, a.num_classes)
    train_set = VOCSegmentation(a.data, a.train_split)
    val_set = VOCSegmentation(a.data, a.val_split)

    previous = None
    for name, lr in STAGES:
        net = models.MODELS[name](num_classes=a.num_classes, backbone=a.backbone,
                                  normalize=a.normalize)
        if previous is not None:
            report = transplant(net, previous)
            print(f"{name}: from the previous stage: {report}".splitlines()[0])
        elif a.vgg16:
            print(f"{name}: from ImageNet VGG16: {import_torchvision_vgg16(net, a.vgg16)}"
                  .splitlines()[0])
        net.to(a.device)
        loader = Loader(train_set, batch_size=1, mirror=False, seed=1337)  # reference: batch 1
        solver = train.SGD(net, lr=lr * a.lr_scale, momentum=0.99, weight_decay=5e-4)
        trainer = train.Trainer(net, solver, loader, os.path.join(a.out, name),
                                val_data=val_set, num_classes=a.num_classes,
                                val_interval=max(1, a.iters // 4))
        trainer.run(a.iters)
        scores = train.evaluate(net, val_set, a.num_classes)
        print(f"{name}: {metrics.format_table(scores).splitlines()[-1]}")
        previous = net.to("cpu")
    return scores


if __name__ == "__main__":
    main()
