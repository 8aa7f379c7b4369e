"""Benchmarks: `minifcn bench` times kernels, layers and whole nets, side by side with references.

    minifcn bench                       # the full run (about 7 minutes on 2 cores)
    minifcn bench --quick               # seconds, tiny shapes (what the tests run)
    minifcn bench --device cuda         # our CUDA kernels (with the numpy reference beside)
    minifcn bench --json out.json --markdown out.md

What is measured (each a section of sections.SECTIONS, --sections picks some):
  convs     VGG16's 13 convolutions at 224x224: forward, forward+backward, GFLOP/s
  pools     VGG16's five 2x2 max-pools
  deconvs   FCN's upsampling deconvolutions (k64 s32 on 7x7 / 8x8 / 16x16; k4 s2; k16 s8)
  loss      the pixelwise softmax loss (21 classes, 500x500)
  fcn       FCN-8s (VGG16) forward and a training step at 224 and 500, and per-layer
            milliseconds of forward and backward at 500 (like `caffe time`)
  memory    peak memory of an FCN-8s training step, each in a fresh process
  patches   the paper's section 3.1: an AlexNet classifier on each 227x227 patch of a 500x500
            image (a 10x10 grid) vs its convolutionalized FCN on the whole image
  tiny      the demo's training step: fcn8s_tiny, batch 8, 64x64
  allreduce data-parallel training (mpiexec -n 2, the mpich wheel): Allreduce bandwidth of
            our gradient buckets vs mpi4py's one buffer; fcn8s_tiny and FCN-8s steps on 1 and
            2 ranks, with and without overlap (each alone, in fresh processes)

Implementations side by side: our devices ("cpu" Numba, "numpy" the reference, "cuda"), and
PyTorch ("torch") when it is installed. PyTorch always runs in a separate process, so that
neither library's thread pools nor environment (OMP_WAIT_POLICY, thread counts) touch the
other's; the command still produces one report. Timing: warm-up calls (JIT, caches), then
the median of several runs; every run is kept in the JSON. Each section runs in --rounds
rounds (2 by default), ours and PyTorch's interleaved, and each figure keeps its best round:
shared or burstable machines change speed over minutes (the 2-core machine these figures come
from ran 1.6x slower after a minute of sustained load), and interleaving keeps the two sides
from being measured in different phases. A full run takes about 7 minutes on 2 cores; the
numpy reference is timed on smaller VGG inputs (112x112), and not on the full-size nets.

Every report carries the machine: CPU, cores, thread counts, Numba's threading layer, and the
BLAS numpy calls (threadpoolctl) -- on some machines an OPENBLAS_CORETYPE setting silently
halves OpenBLAS's speed, so the BLAS kernel in use is part of every figure.

The files, in reading order:
  sections.py    the table of sections (SECTIONS) and the sizes of a run (settings)
  timing.py      timeit, our arrays on a device, the machine (CPU, threads, BLAS kernel)
  rows.py        a figure's row, summary rows, the best of several rounds
  ops.py         convs, pools, deconvs, loss: ours and PyTorch's, side by side
  nets.py        fcn, tiny, patches: our nets and their PyTorch twins
  memory.py      peak memory of a training step, each side in a fresh process
  allreduce.py   data parallel: Allreduce bandwidth and steps on 1 and 2 MPI ranks
  torch_side.py  TorchNet (a Net walked with each layer's torch_twin) and its check
  workers.py     PyTorch's process and the one-shot worker processes
  report.py      markdown tables, `caffe time` per-layer tables, targets
  command.py     the arguments and the run
"""
from .nets import patch_nets, patch_stack
from .report import TARGETS, report, side_by_side, targets, write_json
from .rows import best_of, total
from .command import add_arguments, main, run
from .sections import SECTIONS, Section, settings

__all__ = ["SECTIONS", "Section", "TARGETS", "add_arguments", "best_of", "main", "patch_nets",
           "patch_stack", "report", "run", "settings", "side_by_side", "targets", "total",
           "write_json"]
