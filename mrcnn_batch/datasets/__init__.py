"""Datasets the project ships generators for: ``shapes``, the synthetic held-out set of the demo
model (a leaf: it imports nothing of the project)."""
