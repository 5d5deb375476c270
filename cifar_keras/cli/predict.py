"""`predict`: the top-5 classes of image files."""

import json
import sys


def add_parser(sub):
    parser = sub.add_parser(
        "predict", help="top-5 classes of image files",
        description="Print the top-5 CIFAR-100 classes of each image (PNG, JPEG, BMP, ... any size, converted to "
        "RGB; the largest centred square is cut out and resized to 32x32 with antialiasing, as CIFAR images are "
        "object-centred squares). MODEL is a .keras file or an export (folder or file, any format). Unreadable "
        "images are reported one line each; the others are still predicted.")
    parser.add_argument("model")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(handler=run)


def run(args, argv):
    from cifar_keras.deploy.predict import predict_files

    results, errors = predict_files(args.model, args.images)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for result in results:
            print(result["image"])
            for rank, entry in enumerate(result["top"], start=1):
                print(f"  {rank}. {entry['class']:<15} {100 * entry['probability']:6.2f} %")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0
