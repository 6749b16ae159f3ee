"""``goodnet synth``: write a built-in benchmark (digits or faces) as lab-layout HDF5 files.

    goodnet synth --dataset digits|faces --out DIR [--seed 0] [--identities 200]
                  [--train N --valid N --test N] [--triggers patch sunglasses ...] [--targets 0 ...]
"""

from goodnet.cli import positive, prepare_out_dir, print_json

HELP = "write a built-in benchmark (digits or faces, with poisoned files per trigger) in the lab's layout"


def add_arguments(parser):
    from goodnet.attacks.triggers import TRIGGERS

    parser.add_argument("--dataset", choices=("digits", "faces"), default="digits", help="which benchmark")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random (same seed, same bytes)")
    parser.add_argument("--identities", type=positive, default=200, help="face identities (faces; at most 1283)")
    parser.add_argument("--train", type=positive, default=None,
                        help="training images (faces: per identity; defaults: digits 5000, faces 30)")
    parser.add_argument("--valid", type=positive, default=None, help="validation images (defaults 1000 / 9)")
    parser.add_argument("--test", type=positive, default=None, help="test images (defaults 1000 / 10)")
    parser.add_argument("--triggers", nargs="+", choices=sorted(TRIGGERS), default=sorted(TRIGGERS),
                        help="one pair of poisoned files per trigger (default: all)")
    parser.add_argument("--targets", nargs="+", type=int, default=[0],
                        help="target label per trigger (one value: the same for all; default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in DIR")
    parser.add_argument("--json", action="store_true", help="print the benchmark description as JSON")


def run(args):
    from goodnet.attacks.benchmarks import write_benchmark

    prepare_out_dir(args)
    sizes = {split: getattr(args, split) for split in ("train", "valid", "test") if getattr(args, split)}
    description = write_benchmark(args.out, args.dataset, args.seed, sizes, args.identities, tuple(args.triggers),
                                  tuple(args.targets), overwrite=args.overwrite)
    if args.json:
        print_json(description)
    else:
        print(f"{args.dataset} benchmark ({description['num_classes']} classes, seed {args.seed}) in {args.out}:")
        for key, name in description["files"].items():
            print(f"  {name}")
    return 0
