"""Hydra finds fakedetect's Optuna sweeper here, in the `hydra_plugins` namespace; the work is in fakedetect.search."""
