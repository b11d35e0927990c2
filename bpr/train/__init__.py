"""Training: coarse-mask synthesis, patch datasets, the training loop."""
