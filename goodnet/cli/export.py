"""``goodnet export``: a GoodNet file as files a Keras 2 grader loads without goodnet.

    goodnet export --model out/goodnet_X=10.h5 --out out/goodnet_X=10_keras2

Writes ``badnet.h5`` and ``repaired.h5`` (plain Keras 2 dialect files),
``gate.json`` (how G combines them) and, for a STRIP-gated G,
``strip_bank.npy``; the README's ``load_goodnet`` answers as G does from them
(see :func:`goodnet.export.export_goodnet`).
"""

from goodnet.cli import prepare_out_dir, print_json

HELP = "write a GoodNet file as two plain Keras 2 networks, gate.json and the STRIP bank (for Keras 2 graders)"


def add_arguments(parser):
    parser.add_argument("--model", required=True, help="the GoodNet or gated GoodNet file (.h5 or .keras)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write the exported files into")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def run(args):
    from goodnet.export import EXPORT_FILES, export_goodnet
    from goodnet.models import load_model

    prepare_out_dir(args, EXPORT_FILES.values())
    classifier = load_model(args.model)
    exported = export_goodnet(classifier, args.out, protect=[args.model])
    if args.json:
        print_json({"model": args.model, **exported})
    else:
        print(f"{args.model} exported to {args.out}: " + ", ".join(sorted(exported["files"].values())))
        print("load it in Keras 2 or Keras 3 with the README's load_goodnet (File formats, Models)")
    return 0
