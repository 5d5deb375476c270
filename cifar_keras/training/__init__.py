"""Training, in the order of one run: the run folder and resume (run_folder), the inputs (inputs), the time
budget (budget, throughput), the optimiser and model (optimizers), the callbacks, finalising (finalise), the record
(record), and `fit` itself (fit), which reads top to bottom."""
