"""Training: the loop, its state, checkpoints, data, torchrun, events and the LR finder."""
