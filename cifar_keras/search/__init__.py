"""Hyperparameter search with KerasTuner, on one machine or as a chief with workers."""
