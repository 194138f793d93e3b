"""The demo: a synthetic shapes dataset and the small model trained on it."""
