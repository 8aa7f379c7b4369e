"""What `minifcn bench` measures: the table of sections, and the sizes of a full run and of
--quick. Each section names our side and PyTorch's side (a pair of functions in ops.py or
nets.py), how its rows are summed up, where the numpy reference and the CUDA simulator take
part, and how the report shows it. --sections picks from this table, in its order."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from . import memory, nets, ops


def _no_totals(rows):
    return rows


@dataclass(frozen=True)
class Section:
    title: str                          # the report's heading
    doc: str = ""                       # what is timed, in a line
    ours: Optional[Callable] = None     # ours(device, cfg) -> (rows, per-layer table or None)
    torch: Optional[Callable] = None    # torch(torch, cfg) -> the same, in PyTorch's process
    totals: Callable = _no_totals       # rows -> rows and their summary rows
    numpy: str = "always"               # numpy reference: "always", "quick" (only), "never"
    simulator: bool = False             # runs on the CUDA simulator (its tiny shapes)
    numpy_small: bool = False           # numpy reference timed at settings' numpy_size
    columns: Optional[tuple] = None     # the report's plain table; None: side by side
    layers: Optional[str] = None        # results key of our per-layer table (`caffe time`)
    layers_caption: str = ""            # its caption (formatted with the table's keys)
    layers_top: Optional[int] = None    # show only the slowest layers
    alone: Optional[Callable] = None    # alone(cfg, with_torch) -> rows: measured once, each
    #                                     side in a fresh process, not in rounds


SECTIONS = {
    "convs": Section(
        "VGG16 convolutions (224x224, batch 1)",
        "VGG16's 13 convolutions at 224x224: forward, forward+backward, GFLOP/s",
        ops.convs_ours, ops.convs_torch, ops.convs_totals, simulator=True, numpy_small=True),
    "pools": Section(
        "VGG16 max-pools (2x2 stride 2)", "VGG16's five 2x2 max-pools",
        ops.pools_ours, ops.pools_torch, ops.pools_totals, simulator=True, numpy_small=True),
    "deconvs": Section(
        "Upsampling deconvolutions (bilinear weight; frozen: dx only; GFLOP/s counts the dense "
        "product PyTorch computes -- ours skips the zeros)",
        "FCN's upsampling deconvolutions (k64 s32 on 7x7 / 8x8 / 16x16; k4 s2; k16 s8)",
        ops.deconvs_ours, ops.deconvs_torch, ops.deconvs_totals, simulator=True),
    "loss": Section(
        "Softmax loss", "the pixelwise softmax loss (21 classes, 500x500)",
        ops.loss_ours, ops.loss_torch, simulator=True),
    "fcn": Section(
        "FCN-8s (VGG16), batch 1",
        "FCN-8s (VGG16) forward and a training step at 224 and 500, and per-layer "
        "milliseconds of forward and backward at 500 (like `caffe time`)",
        nets.fcn_ours, nets.fcn_torch, numpy="quick", layers="fcn_layers",
        layers_caption="Per layer at {size}x{size} (cpu, median of the training steps; "
                       "PyTorch forward beside):"),
    "memory": Section(
        "Peak memory of a training step (fresh process each)",
        "peak memory of an FCN-8s training step, each in a fresh process",
        alone=memory.memory_rows,
        columns=("op", "impl", "shape", "peak_rss_mb", "peak_over_imports_mb",
                 "rss_after_imports_mb", "numpy_traced_peak_mb", "note")),
    "patches": Section(
        "Section 3.1: classifier on patches vs FCN on the whole image",
        "the paper's section 3.1: an AlexNet classifier on each 227x227 patch of a 500x500 "
        "image (a 10x10 grid) vs its convolutionalized FCN on the whole image",
        nets.patches_ours, nets.patches_torch, numpy="never",
        columns=("op", "impl", "shape", "fwd_ms", "fwdbwd_ms", "fwd_x", "fwdbwd_x")),
    "tiny": Section(
        "The demo's training step (fcn8s_tiny)",
        "the demo's training step: fcn8s_tiny, batch 8, 64x64",
        nets.tiny_ours, nets.tiny_torch, layers="tiny_layers",
        layers_caption="Per layer (cpu), the 8 slowest:", layers_top=8),
}


def runs_on(section, device, cfg, simulator=False):
    """Does our `device` take part in `section`? (Not the memory section: it runs alone.)"""
    if device == "cuda" and simulator:
        return section.simulator
    if device == "numpy":          # the reference at full size would take minutes
        return section.numpy == "always" or (section.numpy == "quick" and cfg["quick"])
    return True


# ----------------------------------------------------------------------------- sizes
def settings(quick=False):
    """Sizes and repeats of a full run, or of --quick (tiny shapes: seconds in all)."""
    if quick:
        return dict(
            quick=True, repeat=2, warmup=1, net_repeat=1, size=32, width_div=16,
            numpy_size=16, deconvs=[("up32_2x2", 21, 64, 32, 2, True),
                                    ("up2_4x4", 21, 4, 2, 4, False),
                                    ("up8_4x4", 21, 16, 8, 4, True)],
            loss=(5, 32), fcn=dict(backbone="micro", sizes=[32, 48], layer_size=48, classes=5),
            memory=dict(backbone="micro", size=48, classes=5),
            patches=dict(kind="micro", image=48, patch=32, batch=16),
            tiny=dict(batch=2, size=32, classes=5))
    return dict(
        quick=False, repeat=5, warmup=2, net_repeat=3, size=224, width_div=1, numpy_size=112,
        deconvs=[("upscore 7x7", 21, 64, 32, 7, True), ("upscore 8x8", 21, 64, 32, 8, True),
                 ("upscore 16x16", 21, 64, 32, 16, True),
                 ("upscore2 16x16", 21, 4, 2, 16, False),
                 ("upscore_pool4 34x34", 21, 4, 2, 34, False),
                 ("upscore8 70x70", 21, 16, 8, 70, True)],
        loss=(21, 500), fcn=dict(backbone="vgg16", sizes=[224, 500], layer_size=500,
                                 classes=21),
        memory=dict(backbone="vgg16", size=500, classes=21),
        patches=dict(kind="alexnet", image=500, patch=227, batch=100),
        tiny=dict(batch=8, size=64, classes=5))


def simulator_settings():
    """The CUDA simulator runs every CUDA thread in Python: the smallest op shapes only."""
    tiny = settings(True)
    tiny.update(repeat=1, warmup=0, size=8, width_div=32, conv_names=["conv1_1", "conv2_1"],
                deconvs=[("up2_2x2", 3, 4, 2, 2, False)], loss=(3, 8))
    return tiny
