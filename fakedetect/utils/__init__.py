"""Glue shared by the entry points: building objects from config, checkpoints and run records."""
