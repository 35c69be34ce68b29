"""Evaluation: benchmark loaders, metrics, runs."""
