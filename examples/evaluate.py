"""Score a trained net on a dataset with the paper's four metrics and a per-class IU table.

    python examples/evaluate.py --weights runs/demo/checkpoint.npz            # synthetic val
    python examples/evaluate.py --model fcn8s --num-classes 21 --weights w.npz --data VOC2012

Pixel accuracy, mean accuracy, mean IU and frequency-weighted IU, exactly as the paper
(section 5) and the reference's score.py define them, from one confusion matrix accumulated
over the whole split; each image is run at its own size.
"""
import argparse

from minifcn import metrics, models, train
from minifcn.data import open_dataset
from minifcn.weights import load_weights


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="fcn8s_tiny")
    p.add_argument("--weights", required=True, help="weights .npz or a training checkpoint")
    p.add_argument("--data", default="synthetic", help="'synthetic' or a VOC-layout directory")
    p.add_argument("--split", default="val")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--device", default="cpu")
    a = p.parse_args(argv)

    dataset, num_classes = open_dataset(a.data, a.split, a.num_classes)
    net = models.build(a.model, num_classes=num_classes)
    load_weights(net, a.weights)
    net.to(a.device)
    scores = train.evaluate(net, dataset, num_classes, progress=True)
    print(metrics.format_table(scores, getattr(dataset, "class_names", None)))
    cm = scores["confusion"].hist
    print("confusion matrix (rows: truth, columns: prediction):")
    print("\n".join(" ".join(f"{v:7d}" for v in row) for row in cm))
    return scores


if __name__ == "__main__":
    main()
