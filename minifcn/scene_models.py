"""The nets of the paper's section 5 as minifcn models (registered in models.MODELS):

    siftflow_fcn32s / 16s / 8s      one VGG16 trunk, two heads: 33 semantic classes (score_sem,
                                    loss) and 3 geometric ones (score_geo, loss_geo); the two
                                    losses are summed by training (table 5)
    nyud_fcn32s_color / _hha        one modality in, 40 classes (table 4)
    nyud_fcn32s_color_d             early fusion: colour and depth concatenated into a
                                    4-channel input (Concat), conv1_1_bgrd reads it
    nyud_fcn32s_color_hha           late fusion: a colour and an HHA trunk (layers suffixed
                                    color / hha), their scores averaged (Eltwise 0.5, 0.5)
    pascalcontext_fcn32s / 16s / 8s 59 classes and background (table 6)

Layer and blob names are the reference's (siftflow-fcn*/net.py, nyud-fcn32s-*/net.py), so its
.caffemodels load by name; crops are derived, as everywhere. Keyword arguments as
models.fcn32s (backbone, init, score_init, normalize, dtype, seed, upsampling, materialize).
"""
from __future__ import annotations

import numpy as np

from . import layers as L
from .models import _Builder, _fuse, _geometry, _init, get_backbone, smallest_first_pad
from .net import Net


def _conv(b, name, relu, bottom, c_in, c_out, k, pad=0, init=None):
    layer = L.Conv(c_in, c_out, k, pad=pad, init="zeros", dtype=b.dtype)
    b.fill(layer, b.init if init is None else init)
    b.net.add(name, layer, bottom)
    if relu:
        b.net.add(relu, L.ReLU(), name, name)
    return name


def _trunk(b, cfg, data, in_ch, pad, suffix="", first="conv1_1"):
    """conv1_1 ... fc7 with dropout, every name ending in `suffix`; returns (top, channels)."""
    bottom, c = data, in_ch
    for blk, (width, depth) in enumerate(zip(cfg.widths, cfg.depths), 1):
        for i in range(1, depth + 1):
            name = first if (blk, i) == (1, 1) else f"conv{blk}_{i}"
            bottom = _conv(b, name + suffix, f"relu{blk}_{i}{suffix}", bottom, c, width, 3,
                           pad if (blk, i) == (1, 1) else 1)
            c = width
        b.net.add(f"pool{blk}{suffix}", L.MaxPool(2, 2), bottom)
        bottom = f"pool{blk}{suffix}"
    for n, (k, p, c_out) in zip((6, 7), ((cfg.fc6_kernel, cfg.fc6_pad, cfg.fc_width),
                                         (1, 0, cfg.fc_width))):
        bottom = _conv(b, f"fc{n}{suffix}", f"relu{n}{suffix}", bottom, c, c_out, k, p)
        c = c_out
        if cfg.dropout > 0:
            seed = None if b.seed is None else [b.seed, n, len(b.net.layers)]
            b.net.add(f"drop{n}{suffix}", L.Dropout(cfg.dropout, seed=seed), bottom, bottom)
    return bottom, c


def _head(b, cfg, head, trunk, c, classes, suffix, score_init, upsampling, data="data"):
    """score_fr -> upscore (32s) or the pool4 (16s) and pool3 (8s) skips -> score, names
    ending in `suffix` (siftflow's _sem, _geo); returns the score blob."""
    n, S = len(cfg.widths), 2 ** len(cfg.widths)
    frozen, mid = upsampling != "none", upsampling == "all"
    fr = _conv(b, "score_fr" + suffix, None, trunk, c, classes, 1, init=score_init)
    if head == "32s":
        final = b.deconv("upscore" + suffix, fr, classes, 2 * S, S, frozen)
    else:
        up = b.deconv("upscore2" + suffix, fr, classes, 4, 2, mid)
        p4 = f"pool{n - 1}"
        skip = _conv(b, f"score_{p4}{suffix}", None, p4, cfg.widths[-2], classes, 1,
                     init=score_init)
        fuse = _fuse(b, up, skip, f"fuse_{p4}{suffix}")
        if head == "16s":
            final = b.deconv(f"upscore{S // 2}{suffix}", fuse, classes, S, S // 2, frozen)
        else:
            up = b.deconv(f"upscore_{p4}{suffix}", fuse, classes, 4, 2, mid)
            p3 = f"pool{n - 2}"
            skip = _conv(b, f"score_{p3}{suffix}", None, p3, cfg.widths[-3], classes, 1,
                         init=score_init)
            fuse = _fuse(b, up, skip, f"fuse_{p3}{suffix}")
            final = b.deconv(f"upscore{S // 4}{suffix}", fuse, classes, S // 2, S // 4, frozen)
    return b.net.add("score" + suffix, L.Crop(), [final, data])


def _setup(name, head, inputs, backbone, init, seed, dtype, materialize, overrides):
    cfg = get_backbone(backbone, **overrides)
    pad = cfg.first_pad if cfg.first_pad != "auto" else smallest_first_pad(head, _geometry(cfg))
    suffix = "" if cfg.name == "vgg16" else "_" + cfg.name
    net = Net(inputs, name=name + suffix)
    b = _Builder(net, dtype, _init(cfg.init if init is None else init, materialize), seed)
    return cfg, pad, b


def siftflow(head, classes=33, geo_classes=3, loss=True, backbone="vgg16", *, init=None,
             score_init="zeros", normalize="batch", dtype=np.float32, seed=0,
             upsampling="final", materialize=True, **overrides):
    """SIFT Flow's two-headed FCN: inputs data (+ sem, geo with loss=True); outputs score_sem
    and score_geo (or the losses loss and loss_geo)."""
    cfg, pad, b = _setup(f"siftflow_fcn{head}", head, ["data", "sem", "geo"] if loss
                         else ["data"], backbone, init, seed, dtype, materialize, overrides)
    trunk, c = _trunk(b, cfg, "data", cfg.in_ch, pad)
    for suffix, n, label, loss_name in (("_sem", classes, "sem", "loss"),
                                        ("_geo", geo_classes, "geo", "loss_geo")):
        score = _head(b, cfg, head, trunk, c, n, suffix, score_init, upsampling)
        if loss:
            b.net.add(loss_name, L.SoftmaxLoss(normalize=normalize), [score, label])
    return b.net


def nyud(modality, num_classes=40, loss=True, backbone="vgg16", *, init=None,
         score_init="zeros", normalize="batch", dtype=np.float32, seed=0, upsampling="final",
         materialize=True, **overrides):
    """NYUDv2's FCN-32s on one modality ('color', 'hha'), on colour and depth stacked
    ('color-d', early fusion) or on colour and HHA averaged ('color-hha', late fusion)."""
    images = {"color": ["data"], "hha": ["data"], "color-d": ["color", "depth"],
              "color-hha": ["color", "hha"]}
    if modality not in images:
        raise ValueError(f"NYUD modality {modality!r}: one of {', '.join(images)}")
    name = "nyud_fcn32s_" + modality.replace("-", "_")
    cfg, pad, b = _setup(name, "32s", images[modality] + (["label"] if loss else []), backbone,
                         init, seed, dtype, materialize, overrides)
    net, data = b.net, images[modality][0]
    if modality == "color-hha":
        scores = []
        for m in ("color", "hha"):
            trunk, c = _trunk(b, cfg, m, 3, pad, suffix=m)
            scores.append(_conv(b, "score_fr" + m, None, trunk, c, num_classes, 1,
                                init=score_init))
        net.add("score_fused", L.Sum([0.5, 0.5]), scores)
        S = 2 ** len(cfg.widths)
        up = b.deconv("upscore", "score_fused", num_classes, 2 * S, S, upsampling != "none")
        score = net.add("score", L.Crop(), [up, "color"])
    else:
        in_ch = 3
        if modality == "color-d":
            net.add("data", L.Concat(), ["color", "depth"])
            data, in_ch = "data", 4
        trunk, c = _trunk(b, cfg, data, in_ch, pad,
                          first="conv1_1_bgrd" if modality == "color-d" else "conv1_1")
        score = _head(b, cfg, "32s", trunk, c, num_classes, "", score_init, upsampling, data)
    if loss:
        net.add("loss", L.SoftmaxLoss(normalize=normalize), [score, "label"])
    return net


def pascalcontext(head, num_classes=60, loss=True, backbone="vgg16", **kwargs):
    """PASCAL-Context's FCN: the VOC FCN-32s / 16s / 8s with 59 classes and background."""
    from . import models
    net = getattr(models, f"fcn{head}")(num_classes, loss, backbone, **kwargs)
    net.name = f"pascalcontext_{net.name}"
    return net


def _named(fn, arg, doc):
    def build(**kwargs):
        return fn(arg, **kwargs)
    build.__name__, build.__doc__ = f"{fn.__name__}_{arg}", f"{doc}\n\n{fn.__doc__}"
    return build


MODELS = {
    **{f"siftflow_fcn{h}": _named(siftflow, h, f"SIFT Flow FCN-{h} (two heads)")
       for h in ("32s", "16s", "8s")},
    **{f"nyud_fcn32s_{m.replace('-', '_')}": _named(nyud, m, f"NYUDv2 FCN-32s, {m}")
       for m in ("color", "hha", "color-d", "color-hha")},
    **{f"pascalcontext_fcn{h}": _named(pascalcontext, h, f"PASCAL-Context FCN-{h}")
       for h in ("32s", "16s", "8s")},
}
