"""Training, evaluation, checkpoints and model profiling."""
