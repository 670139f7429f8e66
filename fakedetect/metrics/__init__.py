"""Metrics beyond torchmetrics' own: decision thresholds chosen on validation scores."""
