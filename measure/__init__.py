"""pvq.measure: load models, walk their architecture, capture activations, compress, evaluate."""
