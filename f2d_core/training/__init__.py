"""CGDR mapper training: the FFHQ training crop, the cached training set, and (elsewhere) the training loop."""
