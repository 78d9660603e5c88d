"""REACT training: gated-image CLIP architecture (training.react) and, later, the training loop."""
