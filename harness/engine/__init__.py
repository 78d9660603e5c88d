"""Layer 5, engine: the zero-shot computation. Protocols, the image source and image pass, classifier and
probabilities (one path for every caller), metrics."""
