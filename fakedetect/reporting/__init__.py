"""Figures and reports made from predictions and metrics."""
