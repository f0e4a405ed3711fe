"""pvq.figures: a registry of thesis figures and tables rendered from result tables."""
