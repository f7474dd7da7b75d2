"""Hyperparameter sweeps: search spaces, the train-then-evaluate trial, Pareto analysis."""
