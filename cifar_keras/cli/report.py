"""`report`: regenerate README's results section from the run records."""

from pathlib import Path

from cifar_keras.cli.common import add_data_dir


def add_parser(sub):
    parser = sub.add_parser("report", help="regenerate README's tables and docs/results.md from the run records",
                            description="Rewrite README's generated blocks (headline and results tables) and the "
                            "results page beside it (docs/results.md) between their markers, from the run records "
                            "(*.json) in --records; the text around the markers is left as it is.")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--records", default="saved_models", help="folder of run records (default: saved_models)")
    parser.add_argument("--figures", default="docs/figures", help="where the PNG figures go (default: docs/figures)")
    parser.add_argument("--no-figures", action="store_true", help="only the tables: the results page's figures "
                        "and test-set analysis stay as they are (no data set or model needed)")
    parser.add_argument("--model", default="cnn", help="run whose model gets the test-set analysis (default: cnn)")
    add_data_dir(parser)
    parser.set_defaults(handler=run)


def run(args, argv):
    from cifar_keras.reporting import report

    analysis = None
    if not args.no_figures:
        analysis = report.write_analysis(args.records, args.figures, Path(args.readme).parent, args.data_dir,
                                         args.model)
    changed = report.update_readme(args.readme, args.records, analysis)
    print(f"{args.readme}: results table {'updated' if changed else 'already up to date'}")
