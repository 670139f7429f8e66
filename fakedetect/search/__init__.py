"""Optuna hyperparameter search through Hydra: the sweeper layer, the in-run pruning callback and sweep reports."""
