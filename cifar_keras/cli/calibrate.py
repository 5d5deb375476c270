"""`calibrate`: fold a temperature fitted on the validation split into a saved model."""

import sys
from pathlib import Path

from cifar_keras.cli.common import add_data_dir, add_validation_split, record_beside, run_record, validation_split
from cifar_keras.errors import UserError


def add_parser(sub):
    parser = sub.add_parser(
        "calibrate", help="fold a temperature fitted on validation into a saved model (calibrated probabilities)",
        description="Fit one temperature T on the validation split that fit carves from the training set (the T that "
        "minimises its negative log-likelihood) and write MODEL_PATH with its logits divided by T before the softmax "
        "(a built-in Keras Rescaling layer named 'temperature'): the same predicted classes, calibrated "
        "probabilities. MODEL_PATH itself is left as it is. Writes the calibrated model and a JSON record of ECE "
        "(15 bins), NLL and Brier score before and after, on the validation split and the test set.")
    parser.add_argument("model_path")
    parser.add_argument("--output", help="calibrated model (default: NAME_calibrated.keras beside MODEL_PATH)")
    parser.add_argument("--record", help="JSON record (default: calibration/NAME.json beside MODEL_PATH)")
    parser.add_argument("--figure", help="also draw the test set's reliability diagram, before and after, to this "
                        "PNG file")
    add_validation_split(parser)
    add_data_dir(parser)
    parser.set_defaults(handler=run)


def run(args, argv):
    from cifar_keras import records
    from cifar_keras.evaluation import calibration
    from cifar_keras import data
    from cifar_keras import models

    source = Path(args.model_path)
    output = Path(args.output or source.with_name(f"{source.stem}_calibrated.keras"))
    record_path = Path(args.record or record_beside(source, "calibration"))
    if output.suffix != ".keras":
        raise UserError(f"--output {output}: expected a .keras file name")
    if output.resolve() == source.resolve():
        raise UserError(f"--output {output}: would overwrite the model being calibrated; choose another name")
    model = models.load_keras_model(source)
    dataset = data.load(args.data_dir)
    val, val_split = validation_split(dataset, args)
    calibrated, result, test_logits = calibration.calibrate(model, val, dataset.test)
    temperature = result["temperature"]
    if not calibration.TEMPERATURE_RANGE[0] * 1.001 < temperature < calibration.TEMPERATURE_RANGE[1] / 1.001:
        print(f"calibrate: warning: T = {temperature:.4g} is at the end of the searched range "
              f"{calibration.TEMPERATURE_RANGE}", file=sys.stderr)
    output.parent.mkdir(parents=True, exist_ok=True)
    calibrated.save(output)
    previous = calibration.temperature_of(model)
    record = calibration.rounded(run_record(
        "calibrate", argv, model_path=str(source), output=str(output), temperature=result["temperature"],
        temperature_before=previous, bins=result["bins"], val_split=val_split,
        val_images=len(val), test_images=len(dataset.test), val=result["val"], test=result["test"]))
    if args.figure:
        from cifar_keras.reporting.plots import reliability_diagram

        Path(args.figure).parent.mkdir(parents=True, exist_ok=True)
        reliability_diagram({"before": calibration.probabilities(test_logits),
                             f"after (T = {temperature:.2f})": calibration.probabilities(test_logits, temperature)},
                            dataset.test.fine, args.figure, f"{source.name}: reliability on the test set "
                            f"({len(dataset.test)} images)")
        record["figure"] = str(args.figure)
    records.write(record_path, record)
    test = record["test"]
    print(f"T = {temperature:.4f}; test ECE {test['before']['ece']:.4f} -> {test['after']['ece']:.4f}, "
          f"NLL {test['before']['nll']:.4f} -> {test['after']['nll']:.4f}, Brier {test['before']['brier']:.4f} -> "
          f"{test['after']['brier']:.4f} -> {output} (record {record_path})")
