"""``goodnet synth``: write a built-in benchmark (digits or faces) as lab-layout HDF5 files.

    goodnet synth --dataset digits|faces --out DIR [--seed S] [--identities N]
                  [--train N --valid N --test N] [--triggers patch sunglasses ...] [--targets 0 ...]

The flags, defaults and help come from
:class:`goodnet.attacks.benchmarks.BenchmarkOptions` (every trigger by
default here); the sizes' defaults from ``DEFAULT_SIZES``.
"""

from goodnet.cli import positive, prepare_out_dir, print_json
from goodnet.cli.options import add_options, options_from_args

HELP = "write a built-in benchmark (digits or faces, with poisoned files per trigger) in the lab's layout"

SPLIT_HELP = {"train": "training images (faces: per identity; defaults: digits {digits}, faces {faces})",
              "valid": "validation images (defaults {digits} / {faces})",
              "test": "test images (defaults {digits} / {faces})"}


def add_arguments(parser):
    from goodnet.attacks.benchmarks import DEFAULT_SIZES, TRIGGER_NAMES, BenchmarkOptions

    add_options(parser, BenchmarkOptions, only=("dataset",))
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    add_options(parser, BenchmarkOptions, only=("seed", "identities"))
    for split, text in SPLIT_HELP.items():
        parser.add_argument(f"--{split}", type=positive, default=None,
                            help=text.format(**{dataset: sizes[split] for dataset, sizes in DEFAULT_SIZES.items()}))
    # this command writes every trigger unless told otherwise (the library's default is one)
    add_options(parser, BenchmarkOptions, only=("triggers", "targets"), defaults={"triggers": TRIGGER_NAMES})
    parser.add_argument("--overwrite", action="store_true", help="replace existing files in DIR")
    parser.add_argument("--json", action="store_true", help="print the benchmark description as JSON")


def run(args):
    import dataclasses

    from goodnet.attacks.benchmarks import BenchmarkOptions, write_benchmark

    prepare_out_dir(args)
    sizes = {split: getattr(args, split) for split in ("train", "valid", "test") if getattr(args, split)}
    options = options_from_args(args, BenchmarkOptions, sizes=sizes)
    description = write_benchmark(args.out, **dataclasses.asdict(options), overwrite=args.overwrite)
    if args.json:
        print_json(description)
    else:
        print(f"{args.dataset} benchmark ({description['num_classes']} classes, seed {args.seed}) in {args.out}:")
        for key, name in description["files"].items():
            print(f"  {name}")
    return 0
