"""`export`: write a .keras model in a deployment format and verify it in its own runtime."""

from pathlib import Path

from cifar_keras.cli.common import add_data_dir, positive_int, run_record


def add_parser(sub):
    parser = sub.add_parser(
        "export", help="write a .keras model for TF Serving, onnxruntime, LiteRT or OpenVINO",
        description="Write MODEL_PATH in FORMAT's layout ROOT/NAME/VERSION/, then run it in its own runtime in a "
        "fresh process and compare with the .keras model. Every format takes 'pixels' float32 (None, 32, 32, 3) raw "
        "RGB 0-255 and returns 'probabilities' (None, 100); class names go to labels.txt. saved_model (TF Serving): "
        "saved_model.pb + variables/, labels in assets.extra/, signature serving_default also returning "
        "'top5_classes' and 'top5_probabilities'; onnx: model.onnx; litert: model.tflite (+ model_int8.tflite); "
        "openvino: model.xml + model.bin (+ model_int8.xml/.bin). onnx, litert and openvino need "
        "pip install -e '.[deploy]'.")
    parser.add_argument("model_path")
    parser.add_argument("--format", choices=("saved_model", "onnx", "litert", "openvino"), default="saved_model",
                        help="default: saved_model")
    parser.add_argument("--name", help="model name in the server (default: the file's stem, e.g. cnn)")
    parser.add_argument("--version", type=positive_int,
                        help="version number (default: one more than the highest present)")
    parser.add_argument("--root", help="folder holding NAME/VERSION/ (default: saved_models for saved_model, "
                        "saved_models/FORMAT otherwise, so TF Serving's model folder holds SavedModels only)")
    parser.add_argument("--views", type=int, choices=(1, 2, 6),
                        help="ship the net averaged over this many views of each image: 1 the single-view net (a TTA "
                        "model's inner net), 2 the image and its mirror, 6 flip and translate (default: the model as "
                        "saved; fit saves cnn with 6)")
    parser.add_argument("--int8", action="store_true",
                        help="litert and openvino: also write an int8 model (post-training quantisation calibrated on "
                        "training images; OpenVINO's with nncf)")
    parser.add_argument("--calibration-images", type=positive_int, default=500,
                        help="training images for --int8 calibration, stratified over the classes (default 500)")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip running the export in its own runtime (fresh process) against the .keras model")
    parser.add_argument("--verify-images", type=positive_int, default=1000,
                        help="with --data-dir: verify on the first N test images (default 1000; without --data-dir, "
                        "100 random-pixel images)")
    parser.add_argument("--record", help="also write the verification (per file: runtime, images, top-1 agreement, "
                        "largest probability difference) as a JSON run record here")
    add_data_dir(parser)
    parser.set_defaults(handler=run)


def run(args, argv):
    import numpy as np

    from cifar_keras import models
    from cifar_keras.deploy.export import (artifacts, calibration_images, check_format, export_model, verify,
                                           views_of, with_views)

    check_format(args.format, args.int8)
    if not args.no_verify:  # before writing anything
        from cifar_keras.deploy.runtimes import RUNTIMES, require

        require(*RUNTIMES[args.format], f"verifying the {args.format} export")
    model = with_views(models.load_keras_model(args.model_path), args.views)
    images = None
    if args.int8:
        images = calibration_images(args.data_dir, args.calibration_images)
    root = args.root or ("saved_models" if args.format == "saved_model" else f"saved_models/{args.format}")
    target = export_model(model, root, args.name or Path(args.model_path).stem, args.version, args.format,
                          images if args.int8 else None)
    print(f"exported {args.model_path} -> {target}")
    if args.no_verify:
        return
    if args.data_dir:  # real images the int8 calibration never saw
        from cifar_keras import data

        images = data.load(args.data_dir).test.images[:args.verify_images]
        what = f"the first {len(images)} test images"
    else:
        images = np.random.default_rng(0).integers(0, 256, (100, 32, 32, 3))
        what = "100 random-pixel images (--data-dir: test images)"
    pixels = images.astype(np.float32)
    expected = model.predict(pixels, verbose=0)
    checks = []
    for path, precision in artifacts(target, args.format):
        checks.append(verify(path, args.format, precision, pixels, expected))
        print(f"verified {path} ({precision}) in {checks[-1]['runtime']}, fresh process: top-1 agrees with the .keras "
              f"model on {100 * checks[-1]['top1_agreement']:.1f} % of {what}, max |probability difference| "
              f"{checks[-1]['max_abs_diff']:.1e}")
    if args.record:
        from cifar_keras import records

        records.write(args.record, run_record("export", argv, model_path=str(args.model_path), format=args.format,
                                              views=views_of(model), export=str(target), verified_on=what,
                                              verification=checks))
