"""Structured width pruning: MLP channels and attention heads removed physically, consumers refit."""
