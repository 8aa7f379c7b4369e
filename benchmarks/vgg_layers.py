"""Time VGG16's 13 conv layers and 5 max-pools at 224x224, forward and forward+backward, on
the numpy reference and the Numba cpu device; print ms, GFLOP/s and the BLAS in use.

    python benchmarks/vgg_layers.py [--size 224] [--devices numpy cpu] [--json out.json]
"""
import argparse

from minifcn import bench


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--devices", nargs="+", default=["numpy", "cpu"])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="also write the rows and machine info here")
    args = ap.parse_args(argv)
    rows = []
    for device in args.devices:
        convs = bench.vgg_convs(device, args.size, repeat=args.repeat)
        pools = bench.vgg_pools(device, args.size, repeat=args.repeat)
        rows += convs + [bench.total(convs, "13 convs")] + pools + [bench.total(pools, "5 pools")]
    info = bench.machine_info()
    print(bench.format_machine(info))
    print(bench.markdown(rows))
    if args.json:
        bench.write_json(args.json, {"machine": info, "rows": rows})


if __name__ == "__main__":
    main()
