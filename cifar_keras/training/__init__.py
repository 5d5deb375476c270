"""Training: the optimiser and schedule, the time budget, the run folder and resume, and `fit`."""
