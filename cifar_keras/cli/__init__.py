"""The `python -m cifar_keras` command line."""

from cifar_keras.cli.app import main
