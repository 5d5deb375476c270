"""Evaluation: accuracy and calibration scores, temperature scaling, the CIFAR-100-C corruptions."""
