"""Report-supervised pre-training (MOSMOS objectives A and B)."""
